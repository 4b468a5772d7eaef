//! The daemon's client side, shared by the CLI's commands and the
//! benchmark: a gRPC channel over the Unix socket, gRPC statuses as error
//! messages, and output that reports a closed pipe instead of panicking.

use std::path::Path;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// What a command returns: any error, shown to the user as its message.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub async fn connect(socket: &Path) -> CliResult<Channel> {
    let path = socket.to_owned();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
    Ok(channel)
}

pub fn status_error(s: tonic::Status) -> Box<dyn std::error::Error + Send + Sync> {
    format!(
        "{}: {}",
        crate::server::errors::code_name(s.code()),
        s.message()
    )
    .into()
}

pub fn write_out(path: Option<&Path>, text: &str) -> CliResult {
    match path {
        Some(p) => {
            std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()).into())
        }
        None => {
            // Not print!: a closed pipe (`hsmca list | head`) is an error to
            // report, not a panic.
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write to standard output: {e}").into())
        }
    }
}
