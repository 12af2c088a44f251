//! Code generated from `proto/` by `build.rs`. The module path mirrors the protobuf package;
//! beside it, [`json`], the contract's canonical JSON mapping of events.

pub mod json;

/// The `incode` protobuf namespace.
pub mod incode {
    /// The `incode.gateway` protobuf namespace.
    pub mod gateway {
        /// The `incode.gateway.v1` package: events and the `EventStreamService`.
        #[allow(missing_docs, clippy::all, clippy::pedantic)]
        pub mod v1 {
            tonic::include_proto!("incode.gateway.v1");

            /// Encoded `FileDescriptorSet` of the package, served by gRPC reflection.
            pub const FILE_DESCRIPTOR_SET: &[u8] =
                include_bytes!(concat!(env!("OUT_DIR"), "/incode_gateway_descriptor.bin"));
        }
    }
}

pub use incode::gateway::v1;

impl v1::Event {
    /// The interview (Incode's session) the event is about, if its payload names one.
    pub fn interview_id(&self) -> Option<&str> {
        let id = match self.payload.as_ref()? {
            v1::event::Payload::OnboardingStatusChanged(p) => &p.interview_id,
            v1::event::Payload::WatchlistUpdated(p) => &p.interview_id,
            v1::event::Payload::UnrecognizedNotification(p) => &p.interview_id,
        };
        (!id.is_empty()).then_some(id.as_str())
    }
}
