//! Generates the protobuf types and the tonic service from `proto/`.
//!
//! `protox` compiles the `.proto` files in pure Rust, so no system `protoc` is needed; the same
//! descriptor set is written to `OUT_DIR` for gRPC server reflection.

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
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
