//! A private PostgreSQL cluster in a folder, so `shcr demo` runs on one machine with no database
//! server to set up first.
//!
//! The folder holds:
//! - `pgdata/`: the cluster, made by `initdb` on the first start and reused after;
//! - `socket/`: its unix socket (a system cluster's `/var/run/postgresql` may be missing, or
//!   belong to another server);
//! - `postgres.log`: the server log (kept once as `postgres.log.1` when it passes 10 MiB);
//! - `.lock`: held while a process uses the cluster, so a second `shcr demo` on the same folder is
//!   refused instead of sharing a server that the first one will stop.
//!
//! PostgreSQL refuses to run as root. When shcr runs as root, `initdb` and `pg_ctl` run as the
//! `postgres` OS user (through `runuser`), the folders the server writes are given to that user,
//! and every folder above them must let that user pass.
//!
//! Nothing is installed here: when the server programs are missing the error says which command
//! installs them.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tokio::process::Command;

/// The database `database_url()` names; created on every start if missing.
const DATABASE: &str = "shcr";
/// The cluster's superuser, whoever runs it, so the URL does not depend on the OS user.
const SUPERUSER: &str = "postgres";
/// The OS user the server runs as when shcr runs as root.
const SERVER_OS_USER: &str = "postgres";
const INSTALL_COMMAND: &str = "apt-get install -y postgresql";
/// Crash recovery after a kill replays WAL before the server accepts connections.
const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Processes of a killed server exit soon after they notice that their postmaster is gone.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A port can be taken between probing it and the server binding it; try a few others.
const PORT_ATTEMPTS: usize = 5;
const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
const LOG_TAIL_LINES: usize = 30;
/// `sun_path` holds 108 bytes including the trailing NUL.
const MAX_SOCKET_PATH: usize = 107;
/// Written to postgresql.conf as the last step of initialising, so a half-made cluster is noticed.
const INCLUDE_LINE: &str = "include_if_exists = 'shcr.conf'";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    #[error(
        "the PostgreSQL server programs (initdb, pg_ctl, postgres) were not found ({searched}); \
         install them with `{INSTALL_COMMAND}` (as root), or give shcr the DATABASE_URL of a running server"
    )]
    BinariesMissing { searched: String },

    #[error(
        "the cluster in {pgdata} was made by PostgreSQL {cluster}, but the server programs found in \
         {bindir} are PostgreSQL {found}; install version {cluster} (`apt-get install -y postgresql-{cluster}`), \
         or move {pgdata} aside to start with an empty cluster"
    )]
    VersionMismatch {
        pgdata: PathBuf,
        cluster: String,
        found: String,
        bindir: PathBuf,
    },

    #[error(
        "shcr runs as root and PostgreSQL refuses to run as root, so the server must run as the OS user \
         `{SERVER_OS_USER}`, which does not exist; `{INSTALL_COMMAND}` creates it, or run shcr as a normal user"
    )]
    NoServerUser,

    #[error(
        "shcr runs as root, so PostgreSQL runs as the OS user `{user}`, which cannot use {blocked} ({detail}); \
         choose a data folder that user can reach (for example under /var/tmp), or let it pass with `chmod o+x {blocked}`"
    )]
    NotReachable {
        user: String,
        blocked: PathBuf,
        detail: String,
    },

    #[error(
        "{pgdata} belongs to uid {owner}, but the server would run as {user} (uid {uid}); \
         run shcr as the folder's owner, or give the folder to that user with `chown -R {uid} {pgdata}`"
    )]
    WrongOwner {
        pgdata: PathBuf,
        owner: u32,
        user: String,
        uid: u32,
    },

    #[error(
        "the data folder {data_dir} is in use by another shcr process; stop that one first, or choose another data folder"
    )]
    InUse { data_dir: PathBuf },

    #[error(
        "processes of an earlier server are still running in {pgdata} (pids {pids:?}) although its postmaster is gone; \
         stop them (`kill <pid>`) and start again"
    )]
    LeftoverProcesses { pgdata: PathBuf, pids: Vec<u32> },

    #[error(
        "the data folder path {0} is not valid UTF-8, which PostgreSQL's configuration cannot hold"
    )]
    PathNotUtf8(PathBuf),

    #[error("could not {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },

    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },

    #[error("PostgreSQL did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    StartFailed {
        reason: String,
        log: PathBuf,
        tail: String,
    },

    #[error("PostgreSQL did not stop: {reason}\n--- last lines of {log} ---\n{tail}")]
    StopFailed {
        reason: String,
        log: PathBuf,
        tail: String,
    },

    #[error("could not create database `{DATABASE}`: {0}")]
    CreateDatabase(#[source] sqlx::Error),
}

type Result<T, E = EmbeddedPgError> = std::result::Result<T, E>;

fn io_error(action: impl Into<String>) -> impl FnOnce(io::Error) -> EmbeddedPgError {
    let action = action.into();
    move |source| EmbeddedPgError::Io { action, source }
}

/// A running private cluster. Dropping it leaves the server running (the next `start` on the
/// folder takes it over); `stop` shuts it down.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    layout: Layout,
    server: ServerProcessUser,
    binaries: Binaries,
    port: u16,
    /// Released when this value goes, including when the process dies.
    _lock: File,
}

impl EmbeddedPostgres {
    /// Starts the cluster in `data_dir` (creating it with `initdb` on the first run), or takes over
    /// one left running there by a process that died, and waits until it accepts connections.
    pub async fn start(data_dir: &Path) -> Result<Self> {
        let data_dir = std::path::absolute(data_dir)
            .map_err(io_error(format!("resolve {}", data_dir.display())))?;
        fs::create_dir_all(&data_dir)
            .map_err(io_error(format!("create {}", data_dir.display())))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_error(format!("resolve {}", data_dir.display())))?;
        let layout = Layout::new(data_dir)?;
        let lock = layout.lock()?;

        let server = ServerProcessUser::detect().await?;
        let cluster_major = read_trimmed(&layout.pgdata.join("PG_VERSION"));
        let binaries = Binaries::find(cluster_major.as_deref()).await?;
        if let Some(cluster) = cluster_major
            && cluster != binaries.major
        {
            return Err(EmbeddedPgError::VersionMismatch {
                pgdata: layout.pgdata.clone(),
                cluster,
                found: binaries.major.clone(),
                bindir: binaries.bindir.clone(),
            });
        }

        server.prepare(&layout).await?;
        layout.rotate_log()?;

        let mut pg = Self {
            layout,
            server,
            binaries,
            port: 0,
            _lock: lock,
        };
        if !pg.layout.is_initialised() {
            pg.initialise().await?;
        }
        pg.port = match pg.adopt_running_server().await? {
            Some(port) => port,
            None => pg.launch().await?,
        };
        pg.create_database().await?;
        tracing::info!(port = pg.port, data_dir = %pg.layout.data_dir.display(), "embedded PostgreSQL ready");
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/shcr` (trust authentication on loopback).
    pub fn database_url(&self) -> String {
        url(self.port, DATABASE)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.layout.data_dir
    }

    /// Shuts the server down (`pg_ctl stop -m fast`: sessions are ended, committed work is kept)
    /// and waits until it has exited.
    pub async fn stop(self) -> Result<()> {
        let timeout = STOP_TIMEOUT.as_secs().to_string();
        let output = self
            .pg_ctl(&[
                "stop".as_ref(),
                "-D".as_ref(),
                self.layout.pgdata.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                timeout.as_ref(),
            ])
            .await?;
        if output.status.success() {
            tracing::info!(data_dir = %self.layout.data_dir.display(), "embedded PostgreSQL stopped");
            return Ok(());
        }
        if !self.layout.pgdata.join("postmaster.pid").exists() {
            // Someone else stopped it already: the goal is met.
            return Ok(());
        }
        Err(EmbeddedPgError::StopFailed {
            reason: format!("pg_ctl stop: {}", describe(&output)),
            log: self.layout.log_file.clone(),
            tail: log_tail(&self.layout.log_file, 0),
        })
    }

    async fn initialise(&self) -> Result<()> {
        let layout = &self.layout;
        if layout.pgdata.exists() {
            // A cluster whose initdb did not finish (killed, disk full): keep it for inspection, never
            // delete data, and start afresh beside it.
            let aside = layout
                .data_dir
                .join(format!("pgdata.incomplete-{}", unix_time()));
            tracing::warn!(from = %layout.pgdata.display(), to = %aside.display(), "moving an incomplete cluster aside");
            fs::rename(&layout.pgdata, &aside)
                .map_err(io_error(format!("move {} aside", layout.pgdata.display())))?;
        }
        tracing::info!(pgdata = %layout.pgdata.display(), "initialising a PostgreSQL cluster");
        let output = self
            .server
            .command(&self.binaries.initdb)
            .args([
                "-D".as_ref(),
                layout.pgdata.as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "--auth=trust".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--no-locale".as_ref(),
            ] as [&OsStr; 7])
            .output()
            .await
            .map_err(io_error("run initdb"))?;
        if !output.status.success() {
            return Err(EmbeddedPgError::Command {
                command: format!("initdb -D {}", layout.pgdata.display()),
                status: output.status.to_string(),
                output: combined(&output),
            });
        }
        // Only the loopback address listens (see shcr.conf); trust is fine there and nowhere else.
        let hba = "# Written by shcr: a private demo cluster, reached on loopback only.\n\
                   local all all              trust\n\
                   host  all all 127.0.0.1/32 trust\n";
        self.write_server_file(&layout.pgdata.join("pg_hba.conf"), hba)?;
        let conf_path = layout.pgdata.join("postgresql.conf");
        let mut conf = fs::read_to_string(&conf_path)
            .map_err(io_error(format!("read {}", conf_path.display())))?;
        conf.push_str(&format!(
            "\n# shcr: the settings of this private cluster are in shcr.conf, rewritten at every start.\n{INCLUDE_LINE}\n"
        ));
        self.write_server_file(&conf_path, &conf)
    }

    /// Returns the port of a server already running from this folder. Nobody else holds the
    /// folder lock, so it was left behind by a shcr that was killed: take it over rather than
    /// fail. A postmaster.pid whose process is gone is removed, once no process of that server
    /// is left.
    async fn adopt_running_server(&self) -> Result<Option<u16>> {
        let pid_file = self.layout.pgdata.join("postmaster.pid");
        if !pid_file.exists() {
            return Ok(None);
        }
        let recorded = PidFile::read(&pid_file);
        if let Some(recorded) = recorded
            && self.is_postmaster_of_this_cluster(recorded.pid).await
        {
            tracing::warn!(
                pid = recorded.pid,
                port = recorded.port,
                "taking over a PostgreSQL server left running in the data folder"
            );
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if accepts_connections(recorded.port).await {
                    return Ok(Some(recorded.port));
                }
                if !self.is_postmaster_of_this_cluster(recorded.pid).await {
                    break; // It was shutting down; start a new one below.
                }
                if Instant::now() >= deadline {
                    return Err(EmbeddedPgError::StartFailed {
                        reason: format!(
                            "a server (pid {}) is running from {} but has not accepted connections on port {} within {} s; \
                             stop it with `pg_ctl stop -D {}`",
                            recorded.pid,
                            self.layout.pgdata.display(),
                            recorded.port,
                            START_TIMEOUT.as_secs(),
                            self.layout.pgdata.display()
                        ),
                        log: self.layout.log_file.clone(),
                        tail: log_tail(&self.layout.log_file, 0),
                    });
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }

        // No postmaster of this cluster is alive. Its backends may still be finishing; starting a
        // new server beside them would let two servers write the same files.
        let deadline = Instant::now() + LEFTOVER_TIMEOUT;
        loop {
            let pids = processes_in(&self.layout.pgdata);
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(EmbeddedPgError::LeftoverProcesses {
                    pgdata: self.layout.pgdata.clone(),
                    pids,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        if pid_file.exists() {
            tracing::warn!(pid = ?recorded.map(|r| r.pid), "removing a stale postmaster.pid (its server is not running)");
            fs::remove_file(&pid_file)
                .map_err(io_error(format!("remove {}", pid_file.display())))?;
        }
        self.remove_stale_sockets()?;
        Ok(None)
    }

    /// The socket lock files name the dead postmaster too. Where nothing reaps orphans promptly
    /// (a container's init), that pid lingers as a zombie, which PostgreSQL takes for a live
    /// server. Only this folder's server uses this socket folder, and none of its processes is
    /// left, so whatever socket files remain are stale.
    fn remove_stale_sockets(&self) -> Result<()> {
        let Ok(entries) = fs::read_dir(&self.layout.socket_dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".s.PGSQL.") {
                let path = entry.path();
                fs::remove_file(&path).map_err(io_error(format!("remove {}", path.display())))?;
            }
        }
        Ok(())
    }

    async fn is_postmaster_of_this_cluster(&self, pid: u32) -> bool {
        if Path::new("/proc/self/cwd").exists() {
            // A postmaster works in its data folder; a recycled pid almost never does. A zombie
            // has no cwd link.
            fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == self.layout.pgdata)
        } else {
            self.pg_ctl(&[
                "status".as_ref(),
                "-D".as_ref(),
                self.layout.pgdata.as_os_str(),
            ])
            .await
            .is_ok_and(|output| output.status.success())
        }
    }

    /// Starts the server on a free loopback port, trying another when the port was taken
    /// meanwhile, and returns the port once the server accepts connections.
    async fn launch(&self) -> Result<u16> {
        let mut port = self
            .layout
            .previous_port()
            .filter(|&port| port_is_free(port))
            .map_or_else(free_port, Ok)?;
        let timeout = START_TIMEOUT.as_secs().to_string();
        for attempt in 1..=PORT_ATTEMPTS {
            self.write_runtime_conf(port)?;
            let log_start = fs::metadata(&self.layout.log_file).map_or(0, |m| m.len());
            tracing::info!(port, "starting embedded PostgreSQL");
            let output = self
                .pg_ctl(&[
                    "start".as_ref(),
                    "-D".as_ref(),
                    self.layout.pgdata.as_os_str(),
                    "-l".as_ref(),
                    self.layout.log_file.as_os_str(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    timeout.as_ref(),
                ])
                .await?;
            let new_log = read_from(&self.layout.log_file, log_start);
            if output.status.success() {
                self.wait_until_accepting(port, log_start).await?;
                return Ok(port);
            }
            if new_log.contains("Address already in use") && attempt < PORT_ATTEMPTS {
                tracing::warn!(
                    port,
                    "port taken before PostgreSQL could bind it; trying another"
                );
                port = free_port()?;
                continue;
            }
            return Err(EmbeddedPgError::StartFailed {
                reason: format!("pg_ctl start: {}", describe(&output)),
                log: self.layout.log_file.clone(),
                tail: log_tail(&self.layout.log_file, log_start),
            });
        }
        unreachable!("the last attempt returns")
    }

    /// `pg_ctl -w` returns once the postmaster says it is ready; a connection proves it.
    async fn wait_until_accepting(&self, port: u16, log_start: u64) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !accepts_connections(port).await {
            if Instant::now() >= deadline {
                return Err(EmbeddedPgError::StartFailed {
                    reason: format!(
                        "no connection on 127.0.0.1:{port} within {} s",
                        START_TIMEOUT.as_secs()
                    ),
                    log: self.layout.log_file.clone(),
                    tail: log_tail(&self.layout.log_file, log_start),
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(())
    }

    async fn create_database(&self) -> Result<()> {
        let mut conn = PgConnection::connect(&url(self.port, "postgres"))
            .await
            .map_err(EmbeddedPgError::CreateDatabase)?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut conn)
                .await
                .map_err(EmbeddedPgError::CreateDatabase)?;
        if !exists {
            tracing::info!(database = DATABASE, "creating database");
            // The name is a constant: no quoting concerns.
            match sqlx::query("CREATE DATABASE shcr").execute(&mut conn).await {
                Ok(_) => {}
                // Another process won the race; the database is there all the same.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(EmbeddedPgError::CreateDatabase(e)),
            }
        }
        conn.close().await.map_err(EmbeddedPgError::CreateDatabase)
    }

    /// Settings that may change between runs (the port, the socket folder if the folder moved),
    /// rewritten before every start.
    fn write_runtime_conf(&self, port: u16) -> Result<()> {
        let socket = self
            .layout
            .socket_dir
            .to_str()
            .expect("checked in Layout::new");
        let socket_setting = if socket.len() + "/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH {
            conf_string(socket)
        } else {
            // Too long for a unix socket path: TCP on loopback is enough.
            tracing::warn!(
                socket,
                "socket folder path too long; PostgreSQL listens on TCP only"
            );
            "''".to_owned()
        };
        let conf = format!(
            "# Written by shcr at every start of this private cluster; edits here are overwritten.\n\
             listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = {socket_setting}\n\
             \n\
             # Sized for a laptop that runs shcr beside it.\n\
             max_connections = 100\n\
             shared_buffers = '128MB'\n\
             work_mem = '8MB'\n\
             maintenance_work_mem = '64MB'\n\
             max_wal_size = '1GB'\n\
             \n\
             # Acknowledged writes are clinical records: they must survive a crash.\n\
             fsync = on\n\
             synchronous_commit = on\n\
             full_page_writes = on\n\
             \n\
             # pg_ctl sends stderr to postgres.log in the data folder.\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] '\n\
             log_timezone = 'UTC'\n\
             timezone = 'UTC'\n"
        );
        self.write_server_file(&self.layout.runtime_conf, &conf)
    }

    /// Writes a file inside the cluster, readable by the user the server runs as.
    fn write_server_file(&self, path: &Path, contents: &str) -> Result<()> {
        fs::write(path, contents).map_err(io_error(format!("write {}", path.display())))?;
        self.server.give(path)
    }

    async fn pg_ctl(&self, args: &[&OsStr]) -> Result<Output> {
        self.server
            .command(&self.binaries.pg_ctl)
            .args(args)
            .output()
            .await
            .map_err(io_error("run pg_ctl"))
    }
}

#[derive(Debug)]
struct Layout {
    data_dir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    runtime_conf: PathBuf,
}

impl Layout {
    fn new(data_dir: PathBuf) -> Result<Self> {
        if data_dir.to_str().is_none() {
            return Err(EmbeddedPgError::PathNotUtf8(data_dir));
        }
        let pgdata = data_dir.join("pgdata");
        Ok(Self {
            socket_dir: data_dir.join("socket"),
            log_file: data_dir.join("postgres.log"),
            runtime_conf: pgdata.join("shcr.conf"),
            pgdata,
            data_dir,
        })
    }

    fn lock(&self) -> Result<File> {
        let path = self.data_dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(format!("open {}", path.display())))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(fs::TryLockError::WouldBlock) => Err(EmbeddedPgError::InUse {
                data_dir: self.data_dir.clone(),
            }),
            Err(fs::TryLockError::Error(source)) => Err(EmbeddedPgError::Io {
                action: format!("lock {}", path.display()),
                source,
            }),
        }
    }

    fn is_initialised(&self) -> bool {
        fs::read_to_string(self.pgdata.join("postgresql.conf"))
            .is_ok_and(|conf| conf.lines().any(|line| line.trim() == INCLUDE_LINE))
    }

    fn previous_port(&self) -> Option<u16> {
        fs::read_to_string(&self.runtime_conf)
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("port = ")?.trim().parse().ok())
    }

    fn rotate_log(&self) -> Result<()> {
        if fs::metadata(&self.log_file).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
            let old = self.log_file.with_extension("log.1");
            fs::rename(&self.log_file, &old)
                .map_err(io_error(format!("rotate {}", self.log_file.display())))?;
        }
        Ok(())
    }
}

/// The OS user the server processes run as.
#[derive(Debug)]
enum ServerProcessUser {
    /// shcr's own user.
    Current { uid: u32 },
    /// shcr runs as root, which PostgreSQL refuses; the server runs as this user.
    Other {
        name: String,
        uid: u32,
        gid: u32,
        runuser: PathBuf,
    },
}

impl ServerProcessUser {
    async fn detect() -> Result<Self> {
        let uid = effective_uid().await?;
        if uid != 0 {
            return Ok(Self::Current { uid });
        }
        let (uid, gid) = lookup_user(SERVER_OS_USER)
            .await
            .ok_or(EmbeddedPgError::NoServerUser)?;
        let runuser =
            find_program("runuser", &["/usr/sbin/runuser", "/sbin/runuser"]).ok_or_else(|| {
                EmbeddedPgError::Io {
                    action:
                        "find runuser (util-linux), needed to run PostgreSQL as a non-root user"
                            .to_owned(),
                    source: io::ErrorKind::NotFound.into(),
                }
            })?;
        Ok(Self::Other {
            name: SERVER_OS_USER.to_owned(),
            uid,
            gid,
            runuser,
        })
    }

    fn uid(&self) -> u32 {
        match self {
            Self::Current { uid } | Self::Other { uid, .. } => *uid,
        }
    }

    fn name(&self) -> String {
        match self {
            Self::Current { uid } => format!("uid {uid}"),
            Self::Other { name, .. } => format!("`{name}`"),
        }
    }

    /// A command that runs `program` as this user, in its own process group so that a Ctrl-C
    /// meant for shcr does not reach the server before shcr stops it cleanly. (pg_ctl also puts
    /// the postmaster in a session of its own.)
    fn command(&self, program: &Path) -> Command {
        let mut command = match self {
            Self::Current { .. } => Command::new(program),
            Self::Other { name, runuser, .. } => {
                let mut command = Command::new(runuser);
                command.arg("-u").arg(name).arg("--").arg(program);
                command
            }
        };
        command
            // The server user may not be able to enter shcr's working folder.
            .current_dir("/")
            .stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false)
            // Messages we match on ("Address already in use") must not be translated.
            .env("LC_ALL", "C")
            // Settings meant for another server must not leak into this one.
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .env_remove("PGOPTIONS");
        command
    }

    /// Makes the folders ready for the server: owned by its user, reachable by it.
    async fn prepare(&self, layout: &Layout) -> Result<()> {
        fs::create_dir_all(&layout.socket_dir)
            .map_err(io_error(format!("create {}", layout.socket_dir.display())))?;
        if let Self::Other { name, runuser, .. } = self {
            for path in [&layout.data_dir, &layout.socket_dir, &layout.log_file] {
                if path.exists() {
                    self.give(path)?;
                }
            }
            check_reachable(runuser, name, &layout.data_dir).await?;
        }
        if let Ok(meta) = fs::metadata(&layout.pgdata)
            && meta.uid() != self.uid()
        {
            return Err(EmbeddedPgError::WrongOwner {
                pgdata: layout.pgdata.clone(),
                owner: meta.uid(),
                user: self.name(),
                uid: self.uid(),
            });
        }
        Ok(())
    }

    /// Gives `path` to the server user (nothing to do when that is shcr's own user).
    fn give(&self, path: &Path) -> Result<()> {
        match self {
            Self::Current { .. } => Ok(()),
            Self::Other { name, uid, gid, .. } => {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid)).map_err(io_error(format!(
                    "give {} to the OS user `{name}`",
                    path.display()
                )))
            }
        }
    }
}

/// Checks, as `user`, that `dir` can be written and every folder above it entered; names the
/// first folder that blocks.
async fn check_reachable(runuser: &Path, user: &str, dir: &Path) -> Result<()> {
    let test = |args: Vec<&OsStr>| {
        let mut command = Command::new(runuser);
        command
            .arg("-u")
            .arg(user)
            .arg("--")
            .arg("test")
            .args(args)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        async move {
            command
                .status()
                .await
                .map_err(io_error("run runuser"))
                .map(|s| s.success())
        }
    };
    let dir_os = dir.as_os_str();
    if test(vec![
        "-w".as_ref(),
        dir_os,
        "-a".as_ref(),
        "-x".as_ref(),
        dir_os,
    ])
    .await?
    {
        return Ok(());
    }
    let mut ancestors: Vec<&Path> = dir.ancestors().collect();
    ancestors.reverse();
    for folder in ancestors {
        if !test(vec!["-x".as_ref(), folder.as_os_str()]).await? {
            return Err(EmbeddedPgError::NotReachable {
                user: user.to_owned(),
                blocked: folder.to_owned(),
                detail: describe_permissions(folder, "cannot enter it"),
            });
        }
    }
    Err(EmbeddedPgError::NotReachable {
        user: user.to_owned(),
        blocked: dir.to_owned(),
        detail: describe_permissions(dir, "cannot write in it"),
    })
}

fn describe_permissions(path: &Path, problem: &str) -> String {
    match fs::metadata(path) {
        Ok(meta) => format!(
            "{problem}: mode {:o}, owner uid {}, group gid {}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        ),
        Err(e) => format!("{problem}: {e}"),
    }
}

#[derive(Debug)]
struct Binaries {
    bindir: PathBuf,
    initdb: PathBuf,
    pg_ctl: PathBuf,
    major: String,
}

impl Binaries {
    /// Looks in the existing cluster's version folder first (a server of another major version
    /// cannot open it), then `pg_config --bindir`, then the highest `/usr/lib/postgresql/N/bin`,
    /// then the folder of `pg_ctl` found in PATH.
    async fn find(cluster_major: Option<&str>) -> Result<Self> {
        // In search order: a folder to look in, or why that source gave none.
        let mut sources: Vec<(&str, Result<PathBuf, &str>)> = Vec::new();
        if let Some(major) = cluster_major {
            let dir = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
            sources.push(("the cluster's version", Ok(dir)));
        }
        sources.push((
            "pg_config --bindir",
            pg_config_bindir().await.ok_or("pg_config not found"),
        ));
        let debian = debian_bindirs();
        if debian.is_empty() {
            sources.push(("/usr/lib/postgresql/*/bin", Err("none")));
        }
        sources.extend(
            debian
                .into_iter()
                .map(|dir| ("/usr/lib/postgresql", Ok(dir))),
        );
        let path_dir = find_program("pg_ctl", &[])
            .and_then(|pg_ctl| pg_ctl.canonicalize().ok())
            .and_then(|pg_ctl| pg_ctl.parent().map(Path::to_owned));
        sources.push(("PATH", path_dir.ok_or("no pg_ctl")));

        let mut searched: Vec<String> = Vec::new();
        for (source, dir) in sources {
            match dir {
                Ok(dir) => match Self::in_dir(&dir).await {
                    Ok(found) => return Ok(found),
                    Err(problem) => searched.push(format!("{source} {}: {problem}", dir.display())),
                },
                Err(why) => searched.push(format!("{source}: {why}")),
            }
        }
        Err(EmbeddedPgError::BinariesMissing {
            searched: searched.join("; "),
        })
    }

    async fn in_dir(dir: &Path) -> std::result::Result<Self, String> {
        let missing: Vec<&str> = ["initdb", "pg_ctl", "postgres"]
            .into_iter()
            .filter(|name| !is_executable(&dir.join(name)))
            .collect();
        if !missing.is_empty() {
            return Err(format!("no {}", missing.join(", ")));
        }
        let pg_ctl = dir.join("pg_ctl");
        let output = Command::new(&pg_ctl)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("pg_ctl --version: {e}"))?;
        // "pg_ctl (PostgreSQL) 15.19 (Debian 15.19-0+deb12u1)"
        let text = String::from_utf8_lossy(&output.stdout);
        let major = text
            .split_once("(PostgreSQL) ")
            .and_then(|(_, rest)| rest.split(['.', ' ', '\n']).next())
            .filter(|major| !major.is_empty())
            .ok_or_else(|| format!("unexpected `pg_ctl --version` output: {}", text.trim()))?
            .to_owned();
        Ok(Self {
            bindir: dir.to_owned(),
            initdb: dir.join("initdb"),
            pg_ctl,
            major,
        })
    }
}

async fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
}

/// `/usr/lib/postgresql/N/bin`, highest version first.
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn find_program(name: &str, fallbacks: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
}

async fn effective_uid() -> Result<u32> {
    // "Uid:\treal\teffective\tsaved\tfs"
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(uid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|uid| uid.parse().ok())
    {
        return Ok(uid);
    }
    let output = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io_error("run `id -u`"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| EmbeddedPgError::Command {
            command: "id -u".to_owned(),
            status: output.status.to_string(),
            output: combined(&output),
        })
}

/// (uid, gid) of an OS user, through NSS when `getent` is there, else /etc/passwd.
async fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let parse = |line: &str| {
        let fields: Vec<&str> = line.trim().split(':').collect();
        (fields.len() >= 4 && fields[0] == name)
            .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
            .flatten()
    };
    if let Ok(output) = Command::new("getent")
        .args(["passwd", name])
        .stdin(Stdio::null())
        .output()
        .await
    {
        return parse(&String::from_utf8_lossy(&output.stdout));
    }
    fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(parse)
}

/// The first lines of postmaster.pid: pid, data folder, start time, port, ...
#[derive(Debug, Clone, Copy)]
struct PidFile {
    pid: u32,
    port: u16,
}

impl PidFile {
    fn read(path: &Path) -> Option<Self> {
        let text = fs::read_to_string(path).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        Some(Self {
            pid: lines.first()?.trim().parse().ok()?,
            port: lines.get(3)?.trim().parse().ok()?,
        })
    }
}

/// Processes whose working folder is `dir`: a postmaster and its backends all work in the data
/// folder.
fn processes_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let pid = entry.file_name().to_str()?.parse().ok()?;
            let cwd = fs::read_link(entry.path().join("cwd")).ok()?;
            (cwd == dir).then_some(pid)
        })
        .collect()
}

async fn accepts_connections(port: u16) -> bool {
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        PgConnection::connect(&url(port, "postgres")),
    )
    .await
    {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            true
        }
        _ => false,
    }
}

fn url(port: u16, database: &str) -> String {
    format!("postgres://{SUPERUSER}@127.0.0.1:{port}/{database}")
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> Result<u16> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_error("find a free port on 127.0.0.1"))
}

/// A string value in postgresql.conf syntax.
fn conf_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn read_trimmed(path: &Path) -> Option<String> {
    Some(fs::read_to_string(path).ok()?.trim().to_owned())
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map_or(0, |m| m.len());
        // A log rotated by someone else is shorter than the offset: read all of it.
        let _ = file.seek(SeekFrom::Start(if offset <= len { offset } else { 0 }));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

fn log_tail(path: &Path, offset: u64) -> String {
    let text = read_from(path, offset);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}

fn combined(output: &Output) -> String {
    let mut text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !stderr.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(stderr.trim());
    }
    text
}

fn describe(output: &Output) -> String {
    format!("{} {}", output.status, combined(output))
}

fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_strings_escape_quotes_and_backslashes() {
        assert_eq!(conf_string("/tmp/it's"), "'/tmp/it''s'");
        assert_eq!(conf_string(r"a\b"), r"'a\\b'");
    }

    #[test]
    fn pid_file_gives_pid_and_port() {
        let dir = std::env::temp_dir().join(format!("shcr-pidfile-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("postmaster.pid");
        fs::write(
            &path,
            "4242\n/data\n1700000000\n54321\n/data/socket\n127.0.0.1\n",
        )
        .unwrap();
        let pid_file = PidFile::read(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!((pid_file.pid, pid_file.port), (4242, 54321));
    }
}
