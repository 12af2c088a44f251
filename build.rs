//! Generates the protobuf types and the tonic service from `proto/`.
//!
//! `protox` compiles the `.proto` files in pure Rust, so no system `protoc` is needed; the same
//! descriptor set is written to `OUT_DIR` for gRPC server reflection.
//!
//! The code is generated twice. The messages and the client go to `OUT_DIR` as usual. The
//! server goes to `OUT_DIR/server`, using those messages, except that its `Subscribe` stream
//! yields `crate::grpc::encoded::EncodedResponse`: a `SubscribeResponse` already encoded, so that
//! an event sent to a thousand subscribers is encoded once.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/incode/gateway/v1/events.proto",
        "proto/incode/gateway/v1/event_stream.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }

    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("incode_gateway_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(descriptors.clone())?;

    let server_dir = out_dir.join("server");
    std::fs::create_dir_all(&server_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&server_dir)
        .codec_path("crate::grpc::encoded::Codec")
        .extern_path(
            ".incode.gateway.v1.SubscribeResponse",
            "crate::grpc::encoded::EncodedResponse",
        )
        .extern_path(".incode.gateway.v1", "crate::proto::v1")
        .compile_fds(descriptors)?;
    Ok(())
}
