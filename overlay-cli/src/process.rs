//! Local overlay-node processes: finding the executable, starting one detached from the
//! terminal, telling whether it still runs, signalling it, and picking free loopback ports.
//!
//! A recorded pid is only trusted while the process behind it is still the node we started:
//! on Linux its command line must name the node's data directory, so a pid reused by an
//! unrelated process after a crash or reboot is never signalled.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Name of the node executable.
pub(crate) const NODE_BINARY_NAME: &str = "overlay-node";

/// Environment variables the node reads as defaults for the flags we pass or deliberately omit.
/// They are cleared for children: an `OVERLAY_BOOTSTRAP` exported in the user's shell would
/// otherwise make node 0 join some other ring instead of starting a new one, and an
/// `OVERLAY_API_TOKEN` meant for a remote node would lock this CLI's own clients (which send no
/// token to a local cluster) out of the nodes it starts on loopback.
const NODE_FLAG_VARIABLES: [&str; 6] = [
    "OVERLAY_LISTEN",
    "OVERLAY_HTTP",
    "OVERLAY_DATA_DIR",
    "OVERLAY_BOOTSTRAP",
    overlay_api::auth::TOKEN_ENV,
    overlay_api::auth::TOKEN_FILE_ENV,
];

/// How often waits poll a process's state.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Finds overlay-node: `explicit` if given, else next to the running `overlay` executable
/// (where cargo puts both), else the first match on `PATH`.
pub(crate) fn find_node_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if is_executable_file(path) {
            return Ok(path.to_owned());
        }
        bail!("{} is not an executable file (from --node-bin or OVERLAY_NODE_BIN)", path.display());
    }
    let beside_us = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(NODE_BINARY_NAME)))
        .filter(|candidate| is_executable_file(candidate));
    if let Some(path) = beside_us {
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(NODE_BINARY_NAME)).find(|c| is_executable_file(c))
    });
    on_path.with_context(|| {
        format!(
            "cannot find {NODE_BINARY_NAME} next to this overlay executable or on PATH; build it with \
             `cargo build -p overlay-node` (it lands next to `overlay`), or pass --node-bin PATH"
        )
    })
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// What to start: one overlay-node on fixed ports and a data directory.
#[derive(Debug, Clone)]
pub(crate) struct NodeLaunch<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) listen: &'a str,
    pub(crate) http: &'a str,
    pub(crate) data_dir: &'a Path,
    pub(crate) bootstrap: Option<&'a str>,
    pub(crate) log: &'a Path,
}

impl NodeLaunch<'_> {
    fn arguments(&self) -> Vec<String> {
        let mut arguments = vec![
            "--listen".to_owned(),
            self.listen.to_owned(),
            "--http".to_owned(),
            self.http.to_owned(),
            "--data-dir".to_owned(),
            self.data_dir.display().to_string(),
        ];
        if let Some(bootstrap) = self.bootstrap {
            arguments.extend(["--bootstrap".to_owned(), bootstrap.to_owned()]);
        }
        arguments
    }
}

/// Starts the node in the background and returns its pid. The child gets its own process
/// group, so Ctrl-C in the terminal that ran `overlay` does not reach it, and appends its
/// stdout and stderr to the log file, so restarts keep the earlier history.
pub(crate) fn spawn_detached(launch: &NodeLaunch<'_>) -> Result<u32> {
    std::fs::create_dir_all(launch.data_dir)
        .with_context(|| format!("creating data directory {}", launch.data_dir.display()))?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(launch.log)
        .with_context(|| format!("opening log file {}", launch.log.display()))?;
    let arguments = launch.arguments();
    writeln!(log, "--- overlay: starting {} {}", launch.binary.display(), arguments.join(" "))
        .with_context(|| format!("writing to {}", launch.log.display()))?;
    let stderr_log = log.try_clone().with_context(|| format!("duplicating {}", launch.log.display()))?;
    let mut command = Command::new(launch.binary);
    command.args(&arguments).stdin(Stdio::null()).stdout(log).stderr(stderr_log).process_group(0);
    for variable in NODE_FLAG_VARIABLES {
        command.env_remove(variable);
    }
    // The Child handle is dropped on purpose: the node outlives this command, and liveness is
    // tracked by pid (see `is_running`), which also works from later invocations.
    let child = command.spawn().with_context(|| format!("starting {}", launch.binary.display()))?;
    Ok(child.id())
}

/// Whether `pid` is a live process running the node whose data directory is `data_dir`.
pub(crate) fn is_running(pid: u32, data_dir: &Path) -> bool {
    let Ok(raw) = i32::try_from(pid) else { return false };
    let pid_handle = Pid::from_raw(raw);
    // If the node is our own child that has exited (the demo kills nodes it started), reap it
    // so the zombie does not count as running. For any other pid this fails with ECHILD.
    let _ = waitpid(pid_handle, Some(WaitPidFlag::WNOHANG));
    match kill(pid_handle, None) {
        Ok(()) => {}
        Err(Errno::ESRCH) => return false,
        // EPERM: the pid exists but belongs to another user, so it is not a node we started.
        Err(_) => return false,
    }
    match linux_process_identity(pid) {
        // An empty command line is what /proc shows for a moment while a new process execs;
        // the pid exists and is no zombie, so it is the node we just started.
        Some(identity) => {
            !identity.zombie
                && (identity.arguments.is_empty()
                    || identity.arguments.iter().any(|a| Path::new(a) == data_dir))
        }
        // No /proc (not Linux): the signal probe is all there is.
        None => true,
    }
}

struct ProcessIdentity {
    zombie: bool,
    arguments: Vec<String>,
}

fn linux_process_identity(pid: u32) -> Option<ProcessIdentity> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state letter follows the parenthesised command name, which may itself contain ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    let zombie = matches!(state, Some('Z' | 'X'));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let arguments = cmdline
        .split(|byte| *byte == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    Some(ProcessIdentity { zombie, arguments })
}

/// Sends `signal` to the node, which must be running (checked by the caller).
pub(crate) fn send_signal(pid: u32, signal: Signal) -> Result<()> {
    let raw = i32::try_from(pid).with_context(|| format!("pid {pid} is out of range"))?;
    match kill(Pid::from_raw(raw), signal) {
        // Gone already: the goal of every signal we send is that the node stops.
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("sending {signal} to pid {pid}")),
    }
}

/// Polls until the node has stopped or `deadline` passes; returns whether it stopped.
pub(crate) fn wait_until_stopped(pid: u32, data_dir: &Path, deadline: Instant) -> bool {
    loop {
        if !is_running(pid, data_dir) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// `count` distinct TCP ports on 127.0.0.1 that were free a moment ago. All listeners are held
/// until every port is chosen so the ports differ; another program may still take one before
/// the node binds it, in which case the node fails to start and says so in its log.
pub(crate) fn free_loopback_ports(count: usize) -> io::Result<Vec<u16>> {
    let listeners =
        (0..count).map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))).collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(|listener| listener.local_addr().map(|addr| addr.port())).collect()
}

/// The last `lines` lines of a log file, for error messages about a node that died.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    const MAX_TAIL_BYTES: u64 = 16 * 1024;
    let Ok(mut file) = File::open(path) else { return String::new() };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file.seek(SeekFrom::Start(length.saturating_sub(MAX_TAIL_BYTES))).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().filter(|line| !line.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_nonzero() {
        let ports = free_loopback_ports(6).expect("binding loopback ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 6);
        assert!(ports.iter().all(|port| *port != 0));
    }

    #[test]
    fn our_own_process_runs_but_only_under_its_own_arguments() {
        let me = std::process::id();
        assert!(!is_running(me, Path::new("/no/such/data-dir")));
        let first_argument = std::env::args().next().expect("argv[0] is set");
        assert!(is_running(me, Path::new(&first_argument)));
    }

    #[test]
    fn launch_arguments_follow_the_node_flags() {
        let launch = NodeLaunch {
            binary: Path::new("/bin/overlay-node"),
            listen: "/ip4/127.0.0.1/tcp/4001",
            http: "127.0.0.1:7001",
            data_dir: Path::new("/d/node-1"),
            bootstrap: Some("/ip4/127.0.0.1/tcp/4000"),
            log: Path::new("/d/node-1/node.log"),
        };
        assert_eq!(
            launch.arguments().join(" "),
            "--listen /ip4/127.0.0.1/tcp/4001 --http 127.0.0.1:7001 --data-dir /d/node-1 \
             --bootstrap /ip4/127.0.0.1/tcp/4000"
        );
    }

    #[test]
    fn log_tails_keep_the_last_lines() {
        let dir = std::env::temp_dir().join(format!("overlay-cli-log-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("node.log");
        std::fs::write(&path, "one\ntwo\n\nthree\nfour\n").expect("write log");
        assert_eq!(log_tail(&path, 2), "three | four");
        assert_eq!(log_tail(&dir.join("missing.log"), 2), "");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_freshly_spawned_node_counts_as_running_at_once() {
        let dir = std::env::temp_dir().join(format!("overlay-cli-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = dir.join("fake-node");
        std::fs::write(&script, "#!/bin/sh\nsleep 5\n").expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for attempt in 0..20 {
            let data_dir = dir.join(format!("node-{attempt}"));
            let log = dir.join(format!("node-{attempt}.log"));
            let pid = spawn_detached(&NodeLaunch {
                binary: &script,
                listen: "/ip4/127.0.0.1/tcp/1",
                http: "127.0.0.1:1",
                data_dir: &data_dir,
                bootstrap: None,
                log: &log,
            })
            .expect("spawn");
            assert!(is_running(pid, &data_dir), "attempt {attempt}: pid {pid} should count as running");
            send_signal(pid, Signal::SIGKILL).expect("kill");
            assert!(wait_until_stopped(pid, &data_dir, Instant::now() + Duration::from_secs(5)));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
