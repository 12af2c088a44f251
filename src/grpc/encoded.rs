//! Subscription messages encoded once: the server's `Subscribe` stream yields
//! [`EncodedResponse`]s, `SubscribeResponse`s already in wire form, so an event delivered to a
//! thousand subscribers is encoded once and its bytes shared ([`LoggedEvent::response_bytes`]).
//!
//! `build.rs` generates the server with `SubscribeResponse` mapped to [`EncodedResponse`] and
//! with [`Codec`], which copies the bytes into tonic's buffer through small, bounded buffers so
//! that an idle subscriber holds little memory.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType},
};
use tonic::codec::{BufferSettings, Codec as TonicCodec};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::{log::LoggedEvent, proto::v1};

/// A `SubscribeResponse` in wire form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodedResponse(Bytes);

impl EncodedResponse {
    /// The message carrying a stored event: its shared encoding.
    pub fn event(event: &LoggedEvent) -> Self {
        Self(event.response_bytes().clone())
    }

    /// Any other message (heartbeats, gaps, assignments), encoded now.
    pub fn message(response: v1::subscribe_response::Response) -> Self {
        let message = v1::SubscribeResponse {
            response: Some(response),
        };
        Self(Bytes::from(message.encode_to_vec()))
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl Message for EncodedResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    /// The server never decodes a response; were it asked to, the fields would be skipped.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// Bytes tonic's encoder starts with per stream, and how much it gathers before handing a chunk
/// to HTTP/2: a few events, so that a subscriber's stream holds little while it waits.
fn buffer() -> BufferSettings {
    BufferSettings::new(1024, 8 * 1024)
}

/// The server's codec: prost's, with [`buffer`]'s sizes for encoding.
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> TonicCodec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(buffer())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::default())
    }
}

/// The generated server.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/incode.gateway.v1.rs"));
}
