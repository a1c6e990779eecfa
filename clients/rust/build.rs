//! Generates the FraudDetection messages from the service's wire contract, proto/fraud_detection.proto.

fn main() {
    // Inside this repository the contract is two folders up; a copy of the crate may carry its own.
    let proto = std::env::var("VOXGUARD_PROTO").unwrap_or_else(|_| "../../proto/fraud_detection.proto".into());
    let include = std::path::Path::new(&proto)
        .parent()
        .expect("the proto file's folder")
        .to_path_buf();
    println!("cargo:rerun-if-changed={}", proto);
    println!("cargo:rerun-if-env-changed=VOXGUARD_PROTO");
    prost_build::Config::new()
        .compile_protos(&[&proto], &[include])
        .expect("protoc compiles fraud_detection.proto");
}
