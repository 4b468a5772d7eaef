//! The gRPC contract, generated from `proto/hsmca/v1/hsmca.proto`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("hsmca.v1");

/// The encoded descriptor set, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hsmca_descriptor");
