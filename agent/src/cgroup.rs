//! A container's cgroup (v2) in the guest: its processes, freezing, and usage figures;
//! and what `/proc` says about each process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runm_protocol::{ContainerStats, ProcessInfo, MAX_PROCESSES, MAX_TEXT_LEN};

/// Where the guest mounts cgroup2.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// How long `Pause` waits for the kernel to report the cgroup frozen.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0} did not freeze within {FREEZE_TIMEOUT:?}")]
    FreezeTimeout(PathBuf),
}

/// The cgroup directory of a container, given its path below the cgroup2 root.
pub fn dir(relative: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(relative.trim_start_matches('/'))
}

fn read(path: PathBuf) -> Result<String, CgroupError> {
    std::fs::read_to_string(&path).map_err(|e| CgroupError::Read(path, e))
}

/// Every pid in the cgroup and its descendants.
pub fn pids(cgroup: &Path) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let procs = read(dir.join("cgroup.procs"))?;
        pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Freezes (or thaws) every process of the cgroup; a freeze returns once the kernel says
/// the cgroup is frozen.
pub fn freeze(cgroup: &Path, frozen: bool) -> Result<(), CgroupError> {
    let file = cgroup.join("cgroup.freeze");
    std::fs::write(&file, if frozen { "1" } else { "0" })
        .map_err(|e| CgroupError::Write(file, e))?;
    if !frozen {
        return Ok(());
    }
    let start = Instant::now();
    loop {
        let events = read(cgroup.join("cgroup.events"))?;
        if keyed_value(&events, "frozen") == Some(1) {
            return Ok(());
        }
        if start.elapsed() > FREEZE_TIMEOUT {
            return Err(CgroupError::FreezeTimeout(cgroup.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The value of `key` in a flat-keyed cgroup file (`key value` lines).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// A single-value cgroup file: a number, or `max` (`None`).
fn limit_value(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        v => v.parse().ok(),
    }
}

/// The container's usage from its cgroup files. A missing controller file reads as 0.
pub fn stats(cgroup: &Path) -> Result<ContainerStats, CgroupError> {
    let opt = |name: &str| std::fs::read_to_string(cgroup.join(name)).ok();
    if !cgroup.is_dir() {
        return Err(CgroupError::Read(
            cgroup.to_path_buf(),
            std::io::ErrorKind::NotFound.into(),
        ));
    }
    Ok(ContainerStats {
        cpu_usage_ns: opt("cpu.stat")
            .and_then(|t| keyed_value(&t, "usage_usec"))
            .map_or(0, |us| us.saturating_mul(1000)),
        memory_usage_bytes: opt("memory.current")
            .and_then(|t| limit_value(&t))
            .unwrap_or(0),
        memory_limit_bytes: opt("memory.max").and_then(|t| limit_value(&t)),
        pids_current: opt("pids.current")
            .and_then(|t| limit_value(&t))
            .unwrap_or(0),
    })
}

/// The parent pid from `/proc/<pid>/stat` (the command name in parentheses may hold
/// spaces and parentheses itself).
fn parse_ppid(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The real uid from `/proc/<pid>/status`.
fn parse_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The command line from `/proc/<pid>/cmdline`, arguments joined by spaces; a kernel
/// thread or zombie (empty cmdline) shows its name in brackets, as ps does.
fn parse_cmd(cmdline: &[u8], comm: &str) -> String {
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut cmd = if args.is_empty() {
        format!("[{}]", comm.trim())
    } else {
        args.join(" ")
    };
    if cmd.len() > MAX_TEXT_LEN {
        let mut end = MAX_TEXT_LEN;
        while !cmd.is_char_boundary(end) {
            end -= 1;
        }
        cmd.truncate(end);
    }
    cmd
}

/// What `/proc` says about `pid`; `None` if it is gone.
pub fn process_info(pid: i32) -> Option<ProcessInfo> {
    let base = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(base.join("stat")).ok()?;
    let status = std::fs::read_to_string(base.join("status")).ok()?;
    let cmdline = std::fs::read(base.join("cmdline")).unwrap_or_default();
    let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
    Some(ProcessInfo {
        pid,
        ppid: parse_ppid(&stat)?,
        uid: parse_uid(&status)?,
        cmd: parse_cmd(&cmdline, &comm),
    })
}

/// The processes of the cgroup, as `ps` shows them.
pub fn processes(cgroup: &Path) -> Result<Vec<ProcessInfo>, CgroupError> {
    Ok(pids(cgroup)?
        .into_iter()
        .filter_map(process_info)
        .take(MAX_PROCESSES)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_and_limit_files() {
        let cpu = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(keyed_value(cpu, "usage_usec"), Some(1234));
        assert_eq!(keyed_value(cpu, "usage"), None);
        assert_eq!(keyed_value("populated 1\nfrozen 0\n", "frozen"), Some(0));
        assert_eq!(limit_value("max\n"), None);
        assert_eq!(limit_value("268435456\n"), Some(268_435_456));
        assert_eq!(limit_value("junk"), None);
    }

    #[test]
    fn stats_come_from_cgroup_files() {
        let dir = std::env::temp_dir().join(format!("runm-cgroup-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        std::fs::write(dir.join("memory.current"), "4096\n").unwrap();
        std::fs::write(dir.join("memory.max"), "max\n").unwrap();
        std::fs::write(dir.join("pids.current"), "3\n").unwrap();
        let s = stats(&dir).unwrap();
        assert_eq!(
            s,
            ContainerStats {
                cpu_usage_ns: 1_500_000,
                memory_usage_bytes: 4096,
                memory_limit_bytes: None,
                pids_current: 3,
            }
        );
        std::fs::write(dir.join("memory.max"), "1048576\n").unwrap();
        std::fs::remove_file(dir.join("pids.current")).unwrap();
        let s = stats(&dir).unwrap();
        assert_eq!((s.memory_limit_bytes, s.pids_current), (Some(1_048_576), 0));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(stats(&dir).is_err());
    }

    #[test]
    fn pids_walk_child_cgroups() {
        let dir = std::env::temp_dir().join(format!("runm-pids-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "12\n3\n").unwrap();
        std::fs::write(dir.join("sub/cgroup.procs"), "7\n").unwrap();
        assert_eq!(pids(&dir).unwrap(), vec![3, 7, 12]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn proc_files_are_parsed() {
        assert_eq!(parse_ppid("42 (a) b) c) S 7 42 42 0"), Some(7));
        assert_eq!(parse_ppid("garbage"), None);
        assert_eq!(
            parse_uid("Name:\tsh\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(parse_cmd(b"sleep\x0010\x00", "sleep\n"), "sleep 10");
        assert_eq!(parse_cmd(b"", "kworker/0:1\n"), "[kworker/0:1]");
        assert_eq!(
            parse_cmd(&vec![b'x'; MAX_TEXT_LEN + 10], "").len(),
            MAX_TEXT_LEN
        );
    }

    #[test]
    fn this_process_is_described() {
        let me = i32::try_from(std::process::id()).unwrap();
        let info = process_info(me).unwrap();
        assert_eq!(info.pid, me);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_eq!(Some(info.uid), parse_uid(&status));
        assert!(info.ppid > 0);
        assert!(!info.cmd.is_empty());
    }
}
