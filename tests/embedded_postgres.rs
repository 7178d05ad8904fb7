//! The private PostgreSQL cluster behind `shcr demo`: data kept between runs, a killed server
//! recovered, one process per data folder.
//!
//! Needs the PostgreSQL server programs (initdb, pg_ctl); `scripts/test.sh` installs them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shcr::demo::postgres::{EmbeddedPgError, EmbeddedPostgres};
use sqlx::PgPool;

/// A fresh folder under the system temp folder, removed at the end even when the test fails; a
/// server still running from it then is shut down first, so no test leaves a postmaster behind.
struct TempDataDir(PathBuf);

impl TempDataDir {
    fn new(name: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "shcr-embedded-pg-{name}-{}-{nanos}",
            std::process::id()
        ));
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.0.join("pgdata/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for TempDataDir {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            // SIGQUIT: immediate shutdown; the folder is about to go anyway.
            signal(pid, "QUIT");
            wait_until_gone(pid);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

fn is_alive(pid: u32) -> bool {
    // A zombie still has a /proc entry but no cwd link.
    std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok()
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn pool(pg: &EmbeddedPostgres) -> PgPool {
    PgPool::connect(&pg.database_url())
        .await
        .expect("connect to the embedded cluster")
}

#[tokio::test]
async fn data_written_in_one_run_is_there_in_the_next() {
    let dir = TempDataDir::new("restart");

    let pg = EmbeddedPostgres::start(dir.path())
        .await
        .expect("first start");
    let url = pg.database_url();
    assert!(
        url.starts_with("postgres://postgres@127.0.0.1:") && url.ends_with("/shcr"),
        "{url}"
    );
    let db = pool(&pg).await;
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(name, "shcr");
    sqlx::query("CREATE TABLE kept (note text)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO kept VALUES ('written in run 1')")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    pg.stop().await.expect("first stop");
    assert!(
        dir.postmaster_pid().is_none(),
        "stop waits until the server is gone"
    );

    let pg = EmbeddedPostgres::start(dir.path())
        .await
        .expect("second start");
    let db = pool(&pg).await;
    let note: String = sqlx::query_scalar("SELECT note FROM kept")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(note, "written in run 1");
    db.close().await;
    pg.stop().await.expect("second stop");
}

#[tokio::test]
async fn a_killed_server_with_a_stale_pid_file_is_restarted_with_its_committed_data() {
    let dir = TempDataDir::new("stale-pid");

    let pg = EmbeddedPostgres::start(dir.path())
        .await
        .expect("first start");
    let db = pool(&pg).await;
    sqlx::query("CREATE TABLE acknowledged (id int)")
        .execute(&db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO acknowledged VALUES (7)")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    let postmaster = dir.postmaster_pid().expect("postmaster.pid while running");
    signal(postmaster, "KILL");
    wait_until_gone(postmaster);
    drop(pg); // the process that owned it "died": its folder lock goes with it

    // Make the stale file name a live process that is not PostgreSQL, as after a pid is reused;
    // the server itself would refuse to start if that process belonged to its own OS user.
    let mut impostor = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid_path = dir.path().join("pgdata/postmaster.pid");
    let stale = std::fs::read_to_string(&pid_path).expect("a killed server leaves its pid file");
    let rest = stale.split_once('\n').map_or("", |(_, rest)| rest);
    std::fs::write(&pid_path, format!("{}\n{rest}", impostor.id())).unwrap();

    let restarted = EmbeddedPostgres::start(dir.path()).await;
    impostor.kill().unwrap();
    impostor.wait().unwrap();
    let pg = restarted.expect("start after a kill");
    let db = pool(&pg).await;
    let id: i32 = sqlx::query_scalar("SELECT id FROM acknowledged")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(id, 7, "a committed write survives a crash");
    db.close().await;
    pg.stop().await.expect("stop");
}

#[tokio::test]
async fn a_server_left_running_by_a_dead_process_is_taken_over() {
    let dir = TempDataDir::new("adopt");

    let pg = EmbeddedPostgres::start(dir.path())
        .await
        .expect("first start");
    let (port, postmaster) = (pg.port(), dir.postmaster_pid());
    drop(pg); // as when the demo is killed before it can stop the server

    let pg = EmbeddedPostgres::start(dir.path())
        .await
        .expect("second start");
    assert_eq!(pg.port(), port);
    assert_eq!(
        dir.postmaster_pid(),
        postmaster,
        "the same server, not a new one"
    );
    let db = pool(&pg).await;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&db).await.unwrap();
    assert_eq!(one, 1);
    db.close().await;
    pg.stop().await.expect("stop");
}

#[tokio::test]
async fn a_second_process_on_the_same_folder_is_refused() {
    let dir = TempDataDir::new("in-use");

    let pg = EmbeddedPostgres::start(dir.path())
        .await
        .expect("first start");
    let second = EmbeddedPostgres::start(dir.path()).await;
    assert!(
        matches!(second, Err(EmbeddedPgError::InUse { .. })),
        "{second:?}"
    );
    pg.stop().await.expect("stop");
}

#[tokio::test]
async fn a_cluster_of_another_major_version_is_reported_not_opened() {
    let dir = TempDataDir::new("version");
    std::fs::create_dir_all(dir.path().join("pgdata")).unwrap();
    std::fs::write(dir.path().join("pgdata/PG_VERSION"), "9999\n").unwrap();

    let error = EmbeddedPostgres::start(dir.path())
        .await
        .expect_err("no server of version 9999 is installed");
    assert!(
        matches!(&error, EmbeddedPgError::VersionMismatch { cluster, .. } if cluster == "9999"),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("apt-get install -y postgresql-9999"),
        "{error}"
    );
}

#[tokio::test]
async fn as_root_a_data_folder_the_server_user_cannot_enter_is_explained() {
    if !running_as_root() {
        return; // only as root does the server run as another OS user
    }
    let dir = TempDataDir::new("unreachable");
    std::fs::create_dir_all(dir.path()).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();

    let error = EmbeddedPostgres::start(&dir.path().join("demo"))
        .await
        .expect_err("the postgres OS user cannot enter a root-only folder");
    match &error {
        EmbeddedPgError::NotReachable { blocked, .. } => assert_eq!(blocked, dir.path()),
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("chmod o+x"), "{error}");
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}
