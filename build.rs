//! Compiles `proto/hsmca/v1/hsmca.proto` with protox (pure Rust, so no system
//! `protoc` is needed) and keeps the descriptor set for gRPC reflection (and
//! the same for the SPIFFE Workload API, `proto/spiffe/workload.proto`); and
//! records the git commit the binary is built from, for `hsmca --version`.

use std::{env, fs, path::PathBuf, process::Command};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/hsmca/v1/hsmca.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("hsmca_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Ordered maps make every encoding canonical, so a stored reply is
        // replayed byte for byte.
        .btree_map(".")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    workload_api(&out)?;
    git_commit();
    Ok(())
}

/// The SPIFFE Workload API (`proto/spiffe/workload.proto`, no package: its
/// code is `_.rs`), with its own descriptor set so that reflection on the
/// workload socket lists it and the API socket's does not.
fn workload_api(out: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/spiffe/workload.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto/spiffe"])?;
    fs::write(out.join("workload_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}

/// Sets `HSMCA_GIT_COMMIT` for the crate: `HSMCA_GIT_COMMIT` from the
/// environment when set (a build from a source tarball can say where it came
/// from), else `git rev-parse HEAD` of the source tree, else "unknown" (no
/// git, or not a checkout). The build script runs again when HEAD moves.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=HSMCA_GIT_COMMIT");
    let from_env = env::var("HSMCA_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = from_env.or_else(|| {
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git").args(args).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
        // HEAD names the branch; the branch's ref (loose or packed) names
        // the commit. Watch all three so a new commit rebuilds the version.
        // A path that does not exist would count as changed at every build.
        let watch = |p: String| {
            if std::path::Path::new(&p).exists() {
                println!("cargo:rerun-if-changed={p}");
            }
        };
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
            watch(format!("{dir}/HEAD"));
        }
        if let Some(common) = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]) {
            watch(format!("{common}/packed-refs"));
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch(format!("{common}/{branch}"));
            }
        }
        Some(commit)
    });
    let commit = commit.unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=HSMCA_GIT_COMMIT={commit}");
}
