//! Child processes under measurement: spawned with their output drained (a full pipe would
//! stall the tool and falsify the figures), their memory sampled from `/proc/PID/status` while
//! they run, waited for with `wait4` so that their own CPU time comes back with the exit
//! status, killed (and reaped) if the harness gives up.
//!
//! Peak RSS is the last `VmHWM` read before the child exited, not `wait4`'s `ru_maxrss`. On
//! Linux `ru_maxrss` is the largest high-water mark of every address space the process had:
//! `exec` folds the pre-exec one into it (`exec_mmap` → `setmax_mm_hiwater_rss`). Before
//! `exec` a child runs in a copy of this harness (see `spawn`), whose RSS holds the in-process
//! simulator and grows during the run, so `ru_maxrss` reported the harness's size at spawn
//! time (a no-op consumer showed 13 MB or 25 MB depending on when it was started). `VmHWM`
//! belongs to the address space that `exec` created and starts again from zero there.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

/// What happens to a child's stdout.
pub enum Stdout {
    /// `/dev/null`.
    Null,
    /// Each line is handed to the closure, on a thread of its own, as soon as it is read.
    Lines(Box<dyn FnMut(String) + Send>),
}

/// How a child ended, with the resources it used.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// Exit code, or `None` when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// From spawn to exit.
    pub wall: Duration,
    pub user_s: f64,
    pub sys_s: f64,
    /// Peak resident set size of the program itself, KB: the last `VmHWM` sampled before it
    /// exited (see `RSS_SAMPLE_EVERY`); `None` when it exited before the first sample.
    pub peak_rss_kb: Option<u64>,
    /// The last `VmRSS` sampled before it exited, KB.
    pub last_rss_kb: Option<u64>,
    /// How many `/proc/PID/status` samples were read.
    pub rss_samples: u32,
    /// `wait4`'s `ru_maxrss`, KB. NOT the program's own peak: it includes the RSS of the
    /// forked harness before `exec` (see the module comment). Kept for diagnosis only.
    pub ru_maxrss_incl_pre_exec_kb: i64,
}

impl Exit {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
    fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("signal {s}"),
            _ => "unknown status".into(),
        }
    }
}

/// A running child. Dropping it kills and reaps it unless it was waited for.
pub struct Child {
    pub pid: i32,
    pub name: String,
    pub started: Instant,
    tail: Arc<Mutex<VecDeque<String>>>,
    stderr_lines: mpsc::UnboundedReceiver<(Instant, String)>,
    /// Taken (stopped) just before the child is reaped.
    sampler: Option<RssSampler>,
    reaped: bool,
}

const TAIL: usize = 40;

/// What [`Child::next_stderr`] got.
pub enum Line {
    /// A line, and when the harness read it.
    Read(Instant, String),
    /// The child closed its stderr (it exited).
    Closed,
    TimedOut,
}

fn missing<'a>(needles: &[&'a str], seen: &[bool]) -> Vec<&'a str> {
    needles
        .iter()
        .zip(seen)
        .filter(|(_, s)| !**s)
        .map(|(n, _)| *n)
        .collect()
}

/// How often a running child's `/proc/PID/status` is read. `VmHWM` only grows, so the last
/// read is the peak up to that moment; what the child adds in its last interval (at most this
/// long before it exits: a zombie has no memory figures left to read) is missed.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// What the sampler has read so far.
#[derive(Debug, Clone, Copy, Default)]
struct RssSamples {
    hwm_kb: Option<u64>,
    rss_kb: Option<u64>,
    count: u32,
}

/// A thread reading a child's `VmHWM` and `VmRSS` every `RSS_SAMPLE_EVERY` from spawn until
/// `finish`. The child must stay unreaped until `finish` (or drop) has returned, so that the
/// pid read is never a reused one.
struct RssSampler {
    shared: Arc<(Mutex<(bool, RssSamples)>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: i32) -> RssSampler {
        let shared: Arc<(Mutex<(bool, RssSamples)>, Condvar)> = Arc::default();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("rss-{pid}"))
                .spawn(move || {
                    let (lock, cv) = &*shared;
                    loop {
                        // A zombie's status has no Vm* lines: the previous figures stand.
                        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok();
                        let field = |f| status.as_deref().and_then(|s| status_kb(s, f));
                        let (hwm, rss) = (field("VmHWM"), field("VmRSS"));
                        let Ok(mut g) = lock.lock() else { return };
                        if hwm.is_some() {
                            g.1.hwm_kb = hwm;
                            g.1.rss_kb = rss;
                            g.1.count += 1;
                        }
                        let Ok((g, _)) = cv.wait_timeout_while(g, RSS_SAMPLE_EVERY, |s| !s.0)
                        else {
                            return;
                        };
                        if g.0 {
                            return;
                        }
                    }
                })
                .ok()
        };
        RssSampler { shared, thread }
    }

    /// Stops the thread (waiting for a read under way) and returns the last figures.
    fn finish(mut self) -> RssSamples {
        self.stop()
    }

    fn stop(&mut self) -> RssSamples {
        let (lock, cv) = &*self.shared;
        if let Ok(mut g) = lock.lock() {
            g.0 = true;
        }
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        lock.lock().map(|g| g.1).unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns `program args` with `env` added (and `RUST_LOG` removed unless given), stdin closed,
/// stderr read line by line.
pub fn spawn(
    name: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    stdout: Stdout,
) -> Result<Child> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(match stdout {
            Stdout::Null => Stdio::null(),
            Stdout::Lines(_) => Stdio::piped(),
        });
    for (k, v) in env {
        cmd.env(k, v);
    }
    // How std spawns this (Rust 1.95, Linux/glibc): the `pre_exec` closure below rules out
    // its posix_spawn path (taken only without closures, uid/gid, groups, chroot, or a PATH
    // override with a bare program name), so it is fork(2) (a plain clone, no CLONE_VM) and
    // execvp in the child. The child thus starts as a copy-on-write copy of this harness,
    // the harness's resident anonymous pages counted as its own until exec. posix_spawn or
    // vfork would not cure ru_maxrss: with CLONE_VM the pre-exec address space is the
    // harness's own, and exec folds its high-water mark in all the same (measured on Linux
    // 6.18: after the parent touched 200 MB, /bin/true's ru_maxrss was ~200 MB by fork,
    // vfork and posix_spawn alike). Hence the `VmHWM` sampling. `spawn()` returns only once
    // exec has succeeded (std waits for its close-on-exec socket to close, which exec does
    // after switching address spaces), so every sample is of the new program.
    // SAFETY: prctl is async-signal-safe; the child gets SIGTERM if the harness dies, so a
    // crashed benchmark leaves no listener behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name} ({})", program.display()))?;
    let pid = child.id() as i32;
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(err) = child.stderr.take() {
        let tail = tail.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let at = Instant::now();
                if let Ok(mut t) = tail.lock() {
                    if t.len() == TAIL {
                        t.pop_front();
                    }
                    t.push_back(line.clone());
                }
                let _ = tx.send((at, line));
            }
        });
    }
    if let (Some(out), Stdout::Lines(mut f)) = (child.stdout.take(), stdout) {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                f(line);
            }
        });
    }
    // The pid is reaped by `wait_ok`/`terminate` (wait4) or by `Drop`, never by std's `Child`.
    drop(child);
    Ok(Child {
        pid,
        name: name.to_string(),
        started,
        tail,
        stderr_lines: rx,
        sampler: Some(RssSampler::start(pid)),
        reaped: false,
    })
}

impl Child {
    /// Waits for a stderr line containing `needle`; returns when it was read.
    pub async fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.stderr_lines.recv()).await {
                Ok(Some((at, line))) if line.contains(needle) => return Ok(at),
                Ok(Some(_)) => {}
                Ok(None) => bail!(
                    "{} exited before logging {needle:?}: {}",
                    self.name,
                    self.last_words()
                ),
                Err(_) => bail!(
                    "{} did not log {needle:?} within {} s: {}",
                    self.name,
                    timeout.as_secs(),
                    self.last_words()
                ),
            }
        }
    }

    /// Waits until a stderr line containing each of `needles` has been read, in any order.
    pub async fn wait_stderr_all(&mut self, needles: &[&str], timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut seen = vec![false; needles.len()];
        while seen.iter().any(|s| !s) {
            match self.next_stderr(deadline).await {
                Line::Read(_, line) => {
                    for (i, n) in needles.iter().enumerate() {
                        seen[i] |= line.contains(n);
                    }
                }
                Line::Closed => bail!(
                    "{} exited before logging {:?}: {}",
                    self.name,
                    missing(needles, &seen),
                    self.last_words()
                ),
                Line::TimedOut => bail!(
                    "{} did not log {:?} within {} s: {}",
                    self.name,
                    missing(needles, &seen),
                    timeout.as_secs(),
                    self.last_words()
                ),
            }
        }
        Ok(())
    }

    /// The next stderr line (with when it was read), unless the child closed stderr or
    /// `deadline` passed first.
    pub async fn next_stderr(&mut self, deadline: tokio::time::Instant) -> Line {
        match tokio::time::timeout_at(deadline, self.stderr_lines.recv()).await {
            Ok(Some((at, line))) => Line::Read(at, line),
            Ok(None) => Line::Closed,
            Err(_) => Line::TimedOut,
        }
    }

    /// The last meaningful stderr line, for error messages.
    pub fn last_words(&self) -> String {
        let t = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        t.iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| format!("last stderr line: {}", l.trim()))
            .unwrap_or_else(|| "no stderr output".into())
    }

    pub fn signal(&self, sig: i32) {
        if !self.reaped {
            // SAFETY: plain syscall on our own unreaped child.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
    }

    async fn reap(&mut self, timeout: Duration) -> Result<(Exit, bool)> {
        let pid = self.pid;
        let started = self.started;
        let sampler = self.sampler.take();
        let res =
            tokio::task::spawn_blocking(move || wait_blocking(pid, started, timeout, sampler))
                .await
                .context("waiting for a child")?;
        // Whatever happened, wait_blocking reaped it or it is not ours to reap any more.
        self.reaped = true;
        res.with_context(|| format!("waiting for {}", self.name))
    }

    /// Waits for the child to exit (killing it after `timeout`): its status and usage; a
    /// nonzero exit is an error naming the child and its last words.
    pub async fn wait_ok(mut self, timeout: Duration) -> Result<Exit> {
        let (exit, timed_out) = self.reap(timeout).await?;
        if timed_out {
            bail!(
                "{} did not finish within {} s (killed): {}",
                self.name,
                timeout.as_secs(),
                self.last_words()
            );
        }
        if exit.code != Some(0) {
            bail!(
                "{} failed ({}): {}",
                self.name,
                exit.describe(),
                self.last_words()
            );
        }
        Ok(exit)
    }

    /// SIGTERM, then waits up to `grace` (SIGKILL after that).
    pub async fn terminate(mut self, grace: Duration) -> Result<Exit> {
        self.signal(libc::SIGTERM);
        Ok(self.reap(grace).await?.0)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // Before the pid is reaped and may be reused.
            drop(self.sampler.take());
            // SAFETY: plain syscalls on our own unreaped child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// Blocks until `pid` exits (SIGKILL after `timeout`), then reaps it with `wait4`. The exit is
/// first observed without reaping (`waitid` + `WNOWAIT`), so neither the watchdog nor the RSS
/// sampler can ever touch a reaped, possibly reused, pid.
fn wait_blocking(
    pid: i32,
    started: Instant,
    timeout: Duration,
    sampler: Option<RssSampler>,
) -> Result<(Exit, bool)> {
    let done = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let (lock, cv) = &*done;
            let Ok(guard) = lock.lock() else { return };
            let Ok((mut guard, _)) = cv.wait_timeout_while(guard, timeout, |(exited, _)| !*exited)
            else {
                return;
            };
            if !guard.0 {
                guard.1 = true;
                // SAFETY: the child has not been reaped: reaping waits for this lock.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        })
    };
    let mut ended: Option<Instant> = None;
    loop {
        // SAFETY: zeroed siginfo_t is a valid out-parameter for waitid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain syscall; WNOWAIT leaves the child waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            ended.get_or_insert_with(Instant::now);
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            let (lock, cv) = &*done;
            if let Ok(mut g) = lock.lock() {
                g.0 = true;
            }
            cv.notify_all();
            let _ = watchdog.join();
            drop(sampler);
            bail!("waitid({pid}): {e}");
        }
    }
    let wall = ended.map(|t| t - started).unwrap_or_default();
    let timed_out = {
        let (lock, cv) = &*done;
        let killed = match lock.lock() {
            Ok(mut g) => {
                g.0 = true;
                g.1
            }
            Err(_) => false,
        };
        cv.notify_all();
        killed
    };
    let _ = watchdog.join();
    // The child is a zombie now: its memory is gone, the last sample stands.
    let mem = sampler.map(RssSampler::finish).unwrap_or_default();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter for wait4.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: plain syscall reaping our own child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break r;
        }
    };
    if r < 0 {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let exit = Exit {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        wall,
        user_s: tv(ru.ru_utime),
        sys_s: tv(ru.ru_stime),
        peak_rss_kb: mem.hwm_kb,
        last_rss_kb: mem.rss_kb,
        rss_samples: mem.count,
        ru_maxrss_incl_pre_exec_kb: ru.ru_maxrss,
    };
    Ok((exit, timed_out))
}

/// utime + stime of a running process, in seconds (`/proc/PID/stat`).
pub fn proc_cpu_s(pid: i32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15 (1-based) → indexes 11 and 12.
    let ticks = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .context("unexpected /proc/PID/stat")
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// CPU time of every live thread of a process, in seconds, with nanosecond resolution (the
/// first field of `/proc/PID/task/TID/schedstat`).
pub fn proc_sched_cpu_s(pid: i32) -> Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns: u128 = 0;
    for e in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = e
            .with_context(|| format!("reading {dir}"))?
            .path()
            .join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(s) = std::fs::read_to_string(&path) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u128>().ok())
                .with_context(|| format!("unexpected {}", path.display()))?;
        }
    }
    Ok(ns as f64 / 1e9)
}

/// A `/proc/PID/status` field in KB (e.g. `VmRSS`).
pub fn proc_status_kb(pid: i32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status_kb(&status, field).with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// A field of a `/proc/PID/status` text, in KB.
fn status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    })
}

/// The machine's CPU time so far, from the first line of `/proc/stat`, in seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    /// user + nice + system + irq + softirq.
    pub busy_s: f64,
    pub idle_s: f64,
    /// Taken by the hypervisor for other guests.
    pub steal_s: f64,
}

impl MachineCpu {
    pub fn now() -> Result<MachineCpu> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let f: Vec<f64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .context("unexpected /proc/stat")?
            .split_whitespace()
            .map(|v| v.parse::<f64>().unwrap_or(0.0))
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let at = |i: usize| f.get(i).copied().unwrap_or(0.0) / hz;
        Ok(MachineCpu {
            busy_s: at(0) + at(1) + at(2) + at(5) + at(6),
            idle_s: at(3) + at(4),
            steal_s: at(7),
        })
    }

    /// What was used between `self` and `later`.
    pub fn since(self, later: MachineCpu) -> MachineCpu {
        MachineCpu {
            busy_s: later.busy_s - self.busy_s,
            idle_s: later.idle_s - self.idle_s,
            steal_s: later.steal_s - self.steal_s,
        }
    }
}
