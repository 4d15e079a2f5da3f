//! The emulator processes: started through gcloud, ready when they answer `GET /` with `Ok`,
//! and stopped with their whole process group (gcloud starts a JVM under a Python wrapper).
//!
//! Each emulator runs under a tiny shell watchdog in its own process group: when the process
//! that started it dies (a test binary that exits, a `saga up` that is killed), the watchdog
//! stops the group within a second, so no JVM outlives its owner.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    PubSub,
    Firestore,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::PubSub => "Pub/Sub emulator",
            Kind::Firestore => "Firestore emulator",
        }
    }

    fn component(self) -> &'static str {
        match self {
            Kind::PubSub => "pubsub-emulator",
            Kind::Firestore => "cloud-firestore-emulator",
        }
    }

    fn gcloud_args(self, host: &str, project: &str) -> Vec<String> {
        let host_port = format!("--host-port={host}");
        match self {
            Kind::PubSub => vec![
                "beta".into(),
                "emulators".into(),
                "pubsub".into(),
                "start".into(),
                host_port,
                format!("--project={project}"),
            ],
            Kind::Firestore => vec![
                "emulators".into(),
                "firestore".into(),
                "start".into(),
                host_port,
            ],
        }
    }
}

/// An emulator's JVM heap: the JVM's own sizing, which grows and shrinks the heap with what
/// the emulator holds, or fixed at one size (`-Xms` and `-Xmx` the same), so that how fast
/// the emulator answers does not change with how much one client made it hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Heap {
    #[default]
    Auto,
    /// A size as the JVM takes it: a number, with `k`, `m` or `g`.
    Fixed(String),
}

impl FromStr for Heap {
    type Err = String;

    fn from_str(s: &str) -> Result<Heap, String> {
        if s == "auto" {
            return Ok(Heap::Auto);
        }
        let size = s.to_ascii_lowercase();
        let digits = size.trim_end_matches(['k', 'm', 'g']);
        let one_unit = size.len() - digits.len() <= 1;
        match digits.parse::<u64>() {
            Ok(n) if n > 0 && one_unit => Ok(Heap::Fixed(size)),
            _ => Err(format!(
                "{s:?} is not a heap size: `auto`, or a number with k, m or g (e.g. 4g)"
            )),
        }
    }
}

impl std::fmt::Display for Heap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Heap::Auto => f.write_str("auto"),
            Heap::Fixed(size) => f.write_str(size),
        }
    }
}

impl Heap {
    /// `JAVA_TOOL_OPTIONS` for the emulator's JVM, on top of the caller's own (`base`): the
    /// variable every JVM reads, whatever the launcher script gcloud runs passes it.
    fn java_tool_options(&self, base: Option<&str>) -> Option<String> {
        let Heap::Fixed(size) = self else {
            return None;
        };
        let flags = format!("-Xms{size} -Xmx{size}");
        Some(match base {
            Some(base) if !base.trim().is_empty() => format!("{base} {flags}"),
            _ => flags,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(
        "gcloud is not installed. Install the Google Cloud CLI with the emulators and Java 17+: \
         https://cloud.google.com/sdk/docs/install, then \
         `gcloud components install beta pubsub-emulator cloud-firestore-emulator` \
         (Debian/Ubuntu: `apt-get install google-cloud-cli google-cloud-cli-pubsub-emulator \
         google-cloud-cli-firestore-emulator openjdk-17-jre-headless`)"
    )]
    GcloudMissing,
    #[error(
        "the {name} exited before it was ready (is the `{component}` component installed? \
         `gcloud components install {component}`, or the apt package \
         google-cloud-cli-{component}; it also needs Java 17+). Its log, {log}, ends with:\n{tail}"
    )]
    Exited {
        name: &'static str,
        component: &'static str,
        log: String,
        tail: String,
    },
    #[error("the {name} did not answer on {host} within {waited:?}; see {log}")]
    NotReady {
        name: &'static str,
        host: String,
        waited: Duration,
        log: String,
    },
    #[error("starting the {name}: {source}")]
    Spawn {
        name: &'static str,
        source: std::io::Error,
    },
}

/// A running emulator; dropping it stops it.
#[derive(Debug)]
pub struct Emulator {
    pub kind: Kind,
    /// `127.0.0.1:PORT`, as `PUBSUB_EMULATOR_HOST` / `FIRESTORE_EMULATOR_HOST` take it.
    pub host: String,
    pub log: PathBuf,
    child: Child,
}

/// `sh -c WATCHDOG _ OWNER_PID gcloud ARGS...`: runs gcloud, and stops it when asked (TERM)
/// or when the owner is gone. gcloud makes itself a process-group leader with the JVM in its
/// group, so the group of `$child` is what has to go.
pub(crate) const WATCHDOG: &str = r#"owner=$1; shift
"$@" &
child=$!
stop() {
  group=$(ps -o pgid= -p "$child" 2>/dev/null | tr -d ' ')
  if [ -n "$group" ] && [ "$group" != "$(ps -o pgid= -p $$ | tr -d ' ')" ]; then
    kill -s TERM -- "-$group" 2>/dev/null
  fi
  kill -s TERM "$child" 2>/dev/null
  exit 0
}
trap stop TERM INT HUP
while kill -0 "$owner" 2>/dev/null && kill -0 "$child" 2>/dev/null; do sleep 0.5; done
stop"#;

impl Emulator {
    /// Starts the emulator on `host` (`127.0.0.1:PORT`) with `heap`, and waits until it
    /// answers.
    pub async fn start(
        kind: Kind,
        host: &str,
        project: &str,
        heap: &Heap,
        log: &Path,
    ) -> Result<Emulator, EmulatorError> {
        if !on_path("gcloud") {
            return Err(EmulatorError::GcloudMissing);
        }
        let spawn_error = |source| EmulatorError::Spawn {
            name: kind.name(),
            source,
        };
        let out = File::create(log).map_err(spawn_error)?;
        let err = out.try_clone().map_err(spawn_error)?;
        let child = {
            use std::os::unix::process::CommandExt;
            let mut command = Command::new("sh");
            command
                .arg("-c")
                .arg(WATCHDOG)
                .arg("saga-emulator-watchdog")
                .arg(std::process::id().to_string())
                .arg("gcloud")
                .args(kind.gcloud_args(host, project))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0);
            let base = std::env::var("JAVA_TOOL_OPTIONS").ok();
            if let Some(options) = heap.java_tool_options(base.as_deref()) {
                command.env("JAVA_TOOL_OPTIONS", options);
            }
            command.spawn().map_err(spawn_error)?
        };
        let mut emulator = Emulator {
            kind,
            host: host.to_owned(),
            log: log.to_owned(),
            child,
        };
        emulator.wait_ready(Duration::from_secs(90)).await?;
        Ok(emulator)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), EmulatorError> {
        let started = Instant::now();
        loop {
            if is_ready(&self.host).await {
                return Ok(());
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return Err(EmulatorError::Exited {
                    name: self.kind.name(),
                    component: self.kind.component(),
                    log: self.log.display().to_string(),
                    tail: tail(&self.log, 15),
                });
            }
            if started.elapsed() > limit {
                return Err(EmulatorError::NotReady {
                    name: self.kind.name(),
                    host: self.host.clone(),
                    waited: limit,
                    log: self.log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The process id of the watchdog the emulator runs under (the JVM is a descendant).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the emulator and everything it started.
    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = signal(self.child.id(), "TERM");
            let _ = self.child.wait();
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether an emulator answers `GET /` with `Ok` at `host`.
pub async fn is_ready(host: &str) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(host).await.ok()?;
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        // Read until the answer is complete: some emulators keep the connection open.
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            response.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&response);
            if text.trim_end().ends_with("Ok") {
                return Some(text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.0 200"));
            }
            if n == 0 {
                return Some(false);
            }
        }
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Some(true))
    )
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free local port, for a process to bind a little later: one of [`free_block`]'s, below
/// the ephemeral range (the OS's own pick, port 0, would be in it, where any outgoing
/// connection meanwhile may take it).
pub fn free_port() -> std::io::Result<u16> {
    free_block(1)
}

/// The first of `n` consecutive free local ports (a stack's functions take consecutive
/// ports from the frontend's), between 20000 and 32000: below Linux's ephemeral range
/// (`ip_local_port_range`, 32768-60999 by default), where the local ports of outgoing
/// connections never land. So only another explicit bind can take the block between this
/// check and the functions' binds, seconds later, however many connections other tests
/// open meanwhile. Processes start their search at different places.
pub fn free_block(n: u16) -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::process::id().wrapping_mul(7_919);
    for _ in 0..500 {
        let step = NEXT.fetch_add(u32::from(n), Ordering::Relaxed);
        let start = (FIRST + seed.wrapping_add(step) % SPAN) as u16;
        if (start..start + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(start);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no {n} consecutive free ports"),
    ))
}

/// Sends `signal` ("TERM", "INT", "KILL") to process `pid`, through kill(1) (no unsafe libc
/// call for it); whether the process was there to receive it.
pub fn signal(pid: u32, signal: &str) -> std::io::Result<bool> {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map(|status| status.success())
}

#[cfg(test)]
mod tests {
    use super::Heap;

    #[test]
    fn a_heap_is_auto_or_a_size_the_jvm_takes() {
        assert_eq!("auto".parse(), Ok(Heap::Auto));
        assert_eq!("4g".parse(), Ok(Heap::Fixed("4g".into())));
        assert_eq!("512M".parse(), Ok(Heap::Fixed("512m".into())));
        assert_eq!("1048576".parse(), Ok(Heap::Fixed("1048576".into())));
        for bad in ["", "g", "0g", "4gb", "-4g", "4 g", "four"] {
            let refused = bad.parse::<Heap>().expect_err(bad);
            assert!(refused.contains("not a heap size"), "{refused}");
        }
    }

    #[test]
    fn a_fixed_heap_sets_both_bounds_after_the_caller_s_own_options() {
        let fixed = Heap::Fixed("4g".into());
        assert_eq!(
            fixed.java_tool_options(None).as_deref(),
            Some("-Xms4g -Xmx4g")
        );
        assert_eq!(
            fixed.java_tool_options(Some("-Dx=1")).as_deref(),
            Some("-Dx=1 -Xms4g -Xmx4g")
        );
        assert_eq!(Heap::Auto.java_tool_options(Some("-Dx=1")), None);
        assert_eq!(fixed.to_string(), "4g");
        assert_eq!(Heap::Auto.to_string(), "auto");
    }
}
