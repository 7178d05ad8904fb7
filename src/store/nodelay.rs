//! Turns Nagle's algorithm off on the PostgreSQL connections.
//!
//! sqlx 0.9.0 no longer sets `TCP_NODELAY` on the sockets it opens (0.8 did; upstream
//! transact-rs/sqlx#4335). With Nagle on, a message written while an earlier one is still
//! unacknowledged waits for that acknowledgement, and PostgreSQL delays its acknowledgements
//! (up to 40 ms on Linux): every statement whose request spans two writes (a large bind, a
//! pipelined batch) could stall for one delayed ACK. sqlx gives no handle on its socket, so
//! after connecting we ask PostgreSQL for the client port of the session and find our socket
//! with that local port among this process's file descriptors. Remove this module when sqlx
//! sets the option again.

use socket2::SockRef;
use sqlx::PgConnection;
use std::os::fd::{BorrowedFd, RawFd};

/// Sets `TCP_NODELAY` on the socket under `conn`; a Unix-socket connection is left alone.
pub async fn disable_nagle(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    let port: Option<i32> = sqlx::query_scalar("SELECT inet_client_port()")
        .fetch_one(&mut *conn)
        .await?;
    let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
        return Ok(());
    };
    if let Err(err) = set_on_local_port(port) {
        // Correct without it, only slower; say so once per connection rather than refuse it.
        tracing::warn!(error = %err, "could not set TCP_NODELAY on a database connection");
    }
    Ok(())
}

fn set_on_local_port(port: u16) -> std::io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = entry?.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for the two calls below. Another thread
        // may close it meanwhile: the calls then fail with EBADF, or reach the socket that
        // reused the number, which we only touch if its local port is our session's port
        // and it is connected (a TCP option on a TCP socket either way).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = SockRef::from(&borrowed);
        let Ok(local) = socket.local_addr() else {
            continue;
        };
        if local.as_socket().map(|a| a.port()) != Some(port) || socket.peer_addr().is_err() {
            continue;
        }
        return socket.set_tcp_nodelay(true);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("no socket with local port {port}"),
    ))
}
