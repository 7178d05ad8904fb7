//! Settings every database connection of the store must carry, on both of its pools.

use std::os::fd::{BorrowedFd, RawFd};

use shcr::store::Store;

use crate::common::TestDatabase;

/// `TCP_NODELAY` of this process's TCP socket whose local port is `port`, if there is one.
fn nodelay_of_local_port(port: u16) -> Option<bool> {
    for entry in std::fs::read_dir("/proc/self/fd").expect("fd list") {
        let Ok(fd) = entry.ok()?.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        // SAFETY: borrowed for these calls only; the test's descriptors are not closed under it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let local = socket.local_addr().ok().and_then(|a| a.as_socket());
        if local.map(|a| a.port()) == Some(port) && socket.peer_addr().is_ok() {
            return socket.tcp_nodelay().ok();
        }
    }
    None
}

#[tokio::test]
async fn both_pools_turn_nagle_and_jit_off() {
    let db = TestDatabase::create().await;
    let store = Store::connect(&db.url, 4).await.expect("connect");
    for (name, pool) in [("pool", store.pool()), ("lookups", store.lookups_pool())] {
        let mut conn = pool.acquire().await.expect("connection");
        let (port, jit): (i32, String) =
            sqlx::query_as("SELECT inet_client_port(), current_setting('jit')")
                .fetch_one(&mut *conn)
                .await
                .expect("session facts");
        assert_eq!(jit, "off", "{name}: jit");
        let port = u16::try_from(port).expect("a TCP port");
        assert_eq!(
            nodelay_of_local_port(port),
            Some(true),
            "{name}: TCP_NODELAY on the socket with local port {port}"
        );
    }
    drop(store);
    drop(db);
}
