//! A corpus of malformed and unusual bundles, each run by runc and by runm side by side
//! in the same test: runm must give runc's answer (the same exit status and output), or
//! refuse with an error that names the offending field or file, and leave nothing behind
//! (no container in `runm list`, no state or socket directory, no runm or virtiofsd
//! process, no mount).
//!
//! Where runm may rightly answer otherwise than runc (runc only warns about something the
//! spec forbids, or a VM can do what runc cannot), the case says why. All cases run in one
//! test that prints a table of every outcome, so one run shows everything
//! (`RUNM_CORPUS_ONLY=case,case` runs only those).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use runm_tests::bundle::{Runm, TestBundle};
use runm_tests::*;
use serde_json::{json, Value};

/// runc answers at once; a case whose runc takes longer than this has hung.
const RUNC_DEADLINE: Duration = Duration::from_secs(60);
/// runm boots a VM for the cases it accepts (seconds in the emulated test host).
const RUNM_DEADLINE: Duration = Duration::from_secs(120);
/// The container's command in every case that does not set its own.
const ARGS: &[&str] = &["echo", "ok"];

/// What a case leaves in config.json after its edit.
enum Write {
    /// The edited config, as JSON.
    Json,
    /// These bytes instead.
    Raw(Vec<u8>),
    /// No config.json at all.
    Missing,
}

/// Where runm may rightly answer otherwise than runc.
#[derive(Clone, Copy)]
enum Leeway {
    /// runm must give runc's answer.
    None,
    /// runc runs the bundle, but runm may refuse it (with an error naming the field).
    MayRefuse(&'static str),
    /// runc refuses the bundle, but runm may run it.
    MayRun(&'static str),
}

/// A case's edit of the good bundle (its directory and config).
type Edit = Box<dyn Fn(&Path, &mut Value) -> Write>;

struct Case {
    name: &'static str,
    /// What runm's refusal must contain: the field's path or the file (`|` separates
    /// alternatives).
    names: &'static str,
    leeway: Leeway,
    edit: Edit,
}

impl Case {
    /// A case that edits config.json.
    fn json(name: &'static str, names: &'static str, edit: impl Fn(&mut Value) + 'static) -> Self {
        Self::dir(name, names, move |_, c| {
            edit(c);
            Write::Json
        })
    }

    /// A case that edits the bundle directory and says what config.json becomes.
    fn dir(
        name: &'static str,
        names: &'static str,
        edit: impl Fn(&Path, &mut Value) -> Write + 'static,
    ) -> Self {
        Self {
            name,
            names,
            leeway: Leeway::None,
            edit: Box::new(edit),
        }
    }

    fn may_refuse(mut self, why: &'static str) -> Self {
        self.leeway = Leeway::MayRefuse(why);
        self
    }

    fn may_run(mut self, why: &'static str) -> Self {
        self.leeway = Leeway::MayRun(why);
        self
    }
}

fn namespaces(c: &mut Value) -> &mut Vec<Value> {
    c["linux"]["namespaces"]
        .as_array_mut()
        .expect("the default config has linux.namespaces")
}

fn push_mount(c: &mut Value, mount: Value) {
    c["mounts"]
        .as_array_mut()
        .expect("the default config has mounts")
        .push(mount);
}

fn set_args(c: &mut Value, args: &[&str]) {
    c["process"]["args"] = json!(args);
}

fn sh(c: &mut Value, script: &str) {
    set_args(c, &["sh", "-c", script]);
}

fn remove(c: &mut Value, key: &str) {
    c.as_object_mut().expect("config is an object").remove(key);
}

/// The corpus. Each case is one mutation of a good busybox bundle running `echo ok`.
fn corpus() -> Vec<Case> {
    vec![
        // --- config.json itself ---
        Case::dir("config_missing", "config.json", |_, _| Write::Missing),
        Case::dir("config_empty", "config.json", |_, _| Write::Raw(Vec::new())),
        Case::dir("config_not_json", "config.json", |_, _| {
            Write::Raw(b"{ this is not json".to_vec())
        }),
        Case::dir("config_trailing_garbage", "config.json", |_, c| {
            Write::Raw(format!("{c} garbage").into_bytes())
        })
        .may_refuse(
            "bytes after the JSON document: runm reads config.json strictly, where runc's \
             decoder stops after the first value",
        ),
        Case::dir("config_top_level_array", "config.json", |_, _| {
            Write::Raw(b"[]".to_vec())
        }),
        Case::dir("config_null", "config.json", |_, _| {
            Write::Raw(b"null".to_vec())
        }),
        // --- ociVersion ---
        Case::json("oci_version_missing", "ociVersion", |c| {
            remove(c, "ociVersion")
        })
        .may_refuse("ociVersion is REQUIRED by the runtime spec; runc does not check it"),
        Case::json("oci_version_banana", "ociVersion", |c| {
            c["ociVersion"] = "banana".into()
        })
        .may_refuse("ociVersion MUST be SemVer; runc does not check it"),
        Case::json("oci_version_0_1_0", "ociVersion", |c| {
            c["ociVersion"] = "0.1.0".into()
        })
        .may_refuse("older than runm's ociVersionMin (1.0.0); runc does not check it"),
        Case::json("oci_version_2_0_0", "ociVersion", |c| {
            c["ociVersion"] = "2.0.0".into()
        })
        .may_refuse("a major version runm does not implement; runc does not check it"),
        Case::json("oci_version_number", "ociVersion", |c| {
            c["ociVersion"] = json!(1.0)
        }),
        // --- process ---
        Case::json("process_missing", "process", |c| remove(c, "process")),
        Case::json("process_args_empty", "process.args", |c| set_args(c, &[])),
        Case::json("process_args_string", "process.args", |c| {
            c["process"]["args"] = "echo ok".into()
        }),
        Case::json("process_args0_missing", "/bin/nonexistent", |c| {
            set_args(c, &["/bin/nonexistent"])
        }),
        Case::dir("process_args0_not_executable", "/not-executable", |d, c| {
            std::fs::write(d.join("rootfs/not-executable"), "#!/bin/sh\necho no\n")
                .expect("write the script");
            set_args(c, &["/not-executable"]);
            Write::Json
        }),
        Case::json("process_cwd_relative", "process.cwd", |c| {
            c["process"]["cwd"] = "tmp".into()
        }),
        Case::json("process_cwd_missing", "process.cwd", |c| {
            c["process"]["cwd"] = "/does/not/exist".into();
            sh(c, "pwd");
        }),
        Case::json("process_uid_negative", "process.user.uid", |c| {
            c["process"]["user"]["uid"] = json!(-1)
        }),
        Case::json("process_uid_huge", "process.user.uid", |c| {
            c["process"]["user"]["uid"] = json!(1u64 << 32)
        }),
        Case::json("process_terminal_string", "process.terminal", |c| {
            c["process"]["terminal"] = "yes".into()
        }),
        Case::json("process_env_without_equals", "process.env", |c| {
            c["process"]["env"] = json!(["PATH=/bin", "NOEQUALS"])
        }),
        Case::json("process_env_huge", "process.env", |c| {
            let env: Vec<String> = (0..1000)
                .map(|i| format!("V{i}={}", "x".repeat(100)))
                .chain(["PATH=/bin".to_string()])
                .collect();
            c["process"]["env"] = json!(env);
            sh(c, "echo ${#V999} $(env | grep -c '^V')");
        }),
        Case::json("process_args_unicode", "process.args", |c| {
            set_args(c, &["echo", "héllo wörld ☃ 日本語 🦀", "", "  spaced  "])
        }),
        Case::json("process_capability_unknown", "process.capabilities", |c| {
            c["process"]["capabilities"]["bounding"]
                .as_array_mut()
                .expect("the default config has bounding capabilities")
                .push("CAP_BANANA".into())
        })
        .may_refuse("an unknown capability is a config error; runc only warns and drops it"),
        Case::json(
            "process_rlimit_unknown",
            "process.rlimits|RLIMIT_BANANA",
            |c| c["process"]["rlimits"] = json!([{"type": "RLIMIT_BANANA", "soft": 1, "hard": 1}]),
        ),
        Case::json(
            "process_rlimit_soft_above_hard",
            "process.rlimits|RLIMIT_NOFILE",
            |c| {
                c["process"]["rlimits"] =
                    json!([{"type": "RLIMIT_NOFILE", "soft": 2048, "hard": 1024}])
            },
        ),
        Case::json("process_oom_score_adj_out_of_range", "oomScoreAdj", |c| {
            c["process"]["oomScoreAdj"] = json!(5000)
        }),
        Case::json("process_additional_gids_many", "additionalGids", |c| {
            let gids: Vec<u32> = (1..=64).collect();
            c["process"]["user"]["additionalGids"] = json!(gids);
            sh(c, "id -G | wc -w");
        }),
        Case::json("process_apparmor_profile", "apparmorProfile", |c| {
            c["process"]["apparmorProfile"] = "runm-no-such-profile".into()
        })
        .may_run("a host LSM profile cannot apply in the guest kernel: runm drops it with a warning (the VM is the boundary), so Docker works on AppArmor hosts"),
        Case::json("process_selinux_label", "selinuxLabel", |c| {
            c["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0:c1,c2".into()
        })
        .may_run("a host SELinux label cannot apply in the guest kernel: runm drops it with a warning (the VM is the boundary)"),
        Case::json("process_console_size_negative", "consoleSize", |c| {
            c["process"]["consoleSize"] = json!({"height": -1, "width": 80})
        }),
        // --- root ---
        Case::json("root_missing", "root", |c| remove(c, "root")),
        Case::json("root_path_missing", "root.path", |c| {
            c["root"]["path"] = "no-such-rootfs".into()
        }),
        Case::dir("root_path_a_file", "root.path", |d, c| {
            std::fs::write(d.join("rootfs-file"), "not a directory").expect("write a file");
            c["root"]["path"] = "rootfs-file".into();
            Write::Json
        }),
        Case::json("root_readonly", "root.readonly", |c| {
            c["root"]["readonly"] = true.into();
            sh(c, "touch /x 2>/dev/null && echo writable || echo read-only");
        }),
        // --- namespaces, hostname ---
        Case::json("namespace_duplicate", "linux.namespaces", |c| {
            namespaces(c).push(json!({"type": "pid"}))
        }),
        Case::json("namespace_unknown_type", "linux.namespaces", |c| {
            namespaces(c).push(json!({"type": "banana"}))
        }),
        Case::json("namespace_path_missing", "linux.namespaces", |c| {
            let ns = namespaces(c);
            ns.retain(|n| n["type"] != "network");
            ns.push(json!({"type": "network", "path": "/proc/999999999/ns/net"}));
        }),
        Case::json("namespace_path_of_another_type", "linux.namespaces", |c| {
            let ns = namespaces(c);
            ns.retain(|n| n["type"] != "cgroup");
            ns.push(json!({"type": "cgroup", "path": "/proc/1/ns/ipc"}));
        }),
        Case::json("namespace_path_of_the_host", "linux.namespaces", |c| {
            let ns = namespaces(c);
            ns.retain(|n| n["type"] != "ipc");
            ns.push(json!({"type": "ipc", "path": "/proc/1/ns/ipc"}));
        })
        .may_refuse("a microVM cannot join a namespace of the host; runc joins it"),
        Case::json("hostname_without_uts", "hostname", |c| {
            namespaces(c).retain(|n| n["type"] != "uts")
        }),
        Case::json("hostname_too_long", "hostname", |c| {
            c["hostname"] = "h".repeat(100).into()
        }),
        // --- mounts ---
        Case::json("mount_without_destination", "mounts", |c| {
            push_mount(c, json!({"type": "tmpfs", "source": "tmpfs"}))
        }),
        Case::json("mount_relative_destination", "mounts", |c| {
            push_mount(
                c,
                json!({"destination": "relative/dir", "type": "tmpfs", "source": "tmpfs"}),
            );
            sh(c, "grep -c ' /relative/dir ' /proc/mounts");
        })
        .may_refuse("the spec says a mount destination MUST be absolute; runc 1.1 only warns"),
        Case::json("mount_bind_source_missing", "/nonexistent/source", |c| {
            push_mount(
                c,
                json!({"destination": "/mnt", "type": "bind", "source": "/nonexistent/source",
                       "options": ["rbind"]}),
            )
        }),
        Case::json("mount_unknown_option", "bananas|mounts[", |c| {
            push_mount(
                c,
                json!({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs",
                       "options": ["bananas"]}),
            )
        }),
        Case::json("mount_unknown_type", "bananafs|mounts[", |c| {
            push_mount(
                c,
                json!({"destination": "/mnt", "type": "bananafs", "source": "none"}),
            )
        }),
        Case::json("mounts_two_hundred", "mounts", |c| {
            for i in 0..200 {
                push_mount(
                    c,
                    json!({"destination": format!("/m/{i}"), "type": "tmpfs", "source": "tmpfs"}),
                );
            }
            sh(c, "grep -c ' /m/' /proc/mounts");
        }),
        // --- hooks ---
        Case::json(
            "hook_relative_path",
            "hook bin/true|hooks.createRuntime",
            |c| c["hooks"] = json!({"createRuntime": [{"path": "bin/true"}]}),
        ),
        Case::json("hook_missing_binary", "/nonexistent/hook", |c| {
            c["hooks"] = json!({"createRuntime": [{"path": "/nonexistent/hook"}]})
        }),
        Case::json(
            "hook_fails",
            "hook",
            |c| c["hooks"] = json!({"createRuntime": [{"path": "/bin/false", "args": ["false"]}]}),
        ),
        // --- sysctl ---
        Case::json("sysctl_unknown", "net.banana", |c| {
            c["linux"]["sysctl"] = json!({"net.banana.peel": "1"})
        }),
        Case::json("sysctl_not_namespaced", "vm.swappiness", |c| {
            c["linux"]["sysctl"] = json!({"vm.swappiness": "10"});
            sh(c, "cat /proc/sys/vm/swappiness");
        })
        .may_run("the container has its own kernel: a host-wide sysctl is the VM's own"),
        // --- resources, cgroups ---
        Case::json("cgroups_path_dotdot", "cgroupsPath", |c| {
            c["linux"]["cgroupsPath"] = "../../runm-corpus-escape".into()
        }),
        Case::json(
            "memory_limit_negative",
            "linux.resources.memory|memory.max",
            |c| c["linux"]["resources"]["memory"] = json!({"limit": -5}),
        ),
        Case::json(
            "memory_limit_tiny",
            "linux.resources.memory|memory.max",
            |c| c["linux"]["resources"]["memory"] = json!({"limit": 4096}),
        ),
        Case::json("cpu_quota_a_million_cpus", "linux.resources.cpu", |c| {
            c["linux"]["resources"]["cpu"] = json!({"quota": 100_000_000_000i64, "period": 100_000})
        }),
        Case::json(
            "cpuset_invalid",
            "linux.resources.cpu.cpus|cpuset.cpus",
            |c| c["linux"]["resources"]["cpu"] = json!({"cpus": "banana"}),
        ),
        // Resources the guest kernel must provide, read back as runc sets them.
        Case::json("cpuset_two_cpus", "linux.resources.cpu", |c| {
            c["linux"]["resources"]["cpu"] = json!({"cpus": "0-1"});
            sh(c, "cat /sys/fs/cgroup/cpuset.cpus");
        }),
        Case::json("blockio_weight", "linux.resources.blockIO", |c| {
            c["linux"]["resources"]["blockIO"] = json!({"weight": 500});
            sh(c, "cat /sys/fs/cgroup/io.bfq.weight");
        }),
        Case::json("hugepage_limits", "linux.resources.hugepageLimits", |c| {
            c["linux"]["resources"]["hugepageLimits"] = json!([
                {"pageSize": "2MB", "limit": 4_194_304},
                {"pageSize": "1GB", "limit": 1_073_741_824}
            ]);
            sh(c, "cat /sys/fs/cgroup/hugetlb.2MB.max /sys/fs/cgroup/hugetlb.1GB.max");
        }),
        Case::json("device_bad_type", "linux.devices", |c| {
            c["linux"]["devices"] =
                json!([{"path": "/dev/corpus", "type": "x", "major": 1, "minor": 3}])
        }),
        Case::json(
            "device_cgroup_bad_access",
            "linux.resources.devices|access",
            |c| c["linux"]["resources"]["devices"] = json!([{"allow": true, "access": "xyz"}]),
        ),
        // --- paths, seccomp, odd linux fields ---
        Case::json("masked_path_relative", "maskedPaths", |c| {
            c["linux"]["maskedPaths"] = json!(["relative/path"])
        }),
        Case::json("readonly_path_missing", "readonlyPaths", |c| {
            c["linux"]["readonlyPaths"] = json!(["/does/not/exist"])
        }),
        Case::json("seccomp_unknown_syscall", "linux.seccomp", |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["banana_syscall"], "action": "SCMP_ACT_ERRNO"}]
            })
        }),
        Case::json("seccomp_bad_action", "linux.seccomp.defaultAction", |c| {
            c["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_BANANA"})
        }),
        Case::json("seccomp_bad_arch", "linux.seccomp.architectures", |c| {
            c["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_BANANA"]
            })
        }),
        Case::json("rootfs_propagation_bad", "rootfsPropagation", |c| {
            c["linux"]["rootfsPropagation"] = "banana".into()
        }),
        Case::json("uid_mappings_without_userns", "uidMappings", |c| {
            c["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 1000, "size": 1}])
        })
        .may_refuse("mappings without a user namespace mean nothing; runc ignores them"),
        Case::json("personality_unknown", "linux.personality", |c| {
            c["linux"]["personality"] = json!({"domain": "BANANA"})
        })
        .may_refuse("an unknown personality domain; runc 1.1 does not know the field"),
        Case::json("linux_missing", "linux.namespaces", |c| {
            remove(c, "linux");
            remove(c, "hostname");
        })
        .may_refuse("no namespaces means the host's network stack, which a microVM cannot share (as Kata refuses it)"),
        Case::json("network_namespace_missing", "linux.namespaces", |c| {
            namespaces(c).retain(|n| n["type"] != "network");
        })
        .may_refuse("host networking: a microVM cannot share the host's network stack (as Kata refuses it)"),
        // --- annotations ---
        Case::json("annotations_huge", "annotations", |c| {
            let many: serde_json::Map<String, Value> = (0..1000)
                .map(|i| (format!("org.corpus.{i}"), "a".repeat(1000).into()))
                .collect();
            c["annotations"] = Value::Object(many);
        }),
        Case::json("annotation_vm_vcpus_bad", "io.runm.vm.vcpus", |c| {
            c["annotations"] = json!({"io.runm.vm.vcpus": "banana"})
        })
        .may_refuse("runm's own annotation, which runc ignores, is not a vCPU count"),
    ]
}

/// How one command ended.
#[derive(Default)]
struct Outcome {
    /// The exit status (128 + signal when killed); None when it hung.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    secs: f64,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Short: the exit status and the first line of stderr (runc's message without its
    /// logrus time and level).
    fn brief(&self) -> String {
        let code = match self.code {
            Some(c) => format!("exit {c}"),
            None => "HUNG".into(),
        };
        let line = self
            .stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        let line = match line.split_once(" msg=\"") {
            Some((_, msg)) => msg.trim_end_matches('"'),
            None => line,
        };
        if self.ok() {
            format!(
                "{code} {:?}",
                self.stdout.trim().chars().take(30).collect::<String>()
            )
        } else {
            format!("{code} {line}")
        }
    }

    fn full(&self) -> String {
        let cut = |s: &str| s.chars().take(2000).collect::<String>();
        format!(
            "{} after {:.1}s\n    stdout: {}\n    stderr: {}",
            self.code
                .map_or("hung".to_string(), |c| format!("exit {c}")),
            self.secs,
            cut(self.stdout.trim_end()),
            cut(self.stderr.trim_end())
        )
    }
}

/// Runs `cmd` with its output captured; kills it after `deadline` (it then "hung").
fn run_timed(mut cmd: Command, deadline: Duration) -> Outcome {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(deadline) {
        Ok(out) => out.expect("wait for the command"),
        Err(_) => {
            let _ = send_signal(pid, "KILL");
            return Outcome {
                code: None,
                secs: start.elapsed().as_secs_f64(),
                ..Outcome::default()
            };
        }
    };
    let code = out.status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0)
    });
    Outcome {
        code: Some(code),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        secs: start.elapsed().as_secs_f64(),
    }
}

/// The good bundle `name` under `tmp`, with `case`'s edit.
fn bundle(tmp: &TempDir, name: &str, case: &Case) -> PathBuf {
    let mut b = TestBundle::busybox(tmp, name, ARGS);
    let config = b.dir.join("config.json");
    match (case.edit)(&b.dir, &mut b.config) {
        Write::Json => std::fs::write(&config, b.config.to_string()),
        Write::Raw(bytes) => std::fs::write(&config, bytes),
        Write::Missing => std::fs::remove_file(&config),
    }
    .expect("write config.json");
    b.dir
}

/// Entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// runm and virtiofsd processes alive, after a grace period for them to end.
fn processes_left() -> Vec<u32> {
    let bin = runm_bin();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut left = processes_running(&bin);
        left.extend(processes_named("virtiofsd"));
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unmounts everything under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    for m in mounts_under(dir).iter().rev() {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
}

/// runm's mounts in this mount namespace: under its bundle or its state root.
fn runm_mounts(runm: &Runm, bundle: &Path) -> Vec<String> {
    let mut mounts = mounts_under(bundle);
    mounts.extend(mounts_under(runm.root()));
    mounts
}

/// What runm left behind after a case; cleans it up so that the next case starts clean.
fn leftovers(runm: &Runm, id: &str, bundle: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let list = run_timed(runm.command(&["list", "-q"]), RUNC_DEADLINE);
    if !list.stdout.trim().is_empty() {
        left.push(format!("`runm list` shows {:?}", list.stdout.trim()));
    }
    let pids = processes_left();
    if !pids.is_empty() {
        left.push(format!("runm/virtiofsd processes {pids:?}"));
    }
    let states = entries(runm.root());
    if !states.is_empty() {
        left.push(format!("state {states:?}"));
    }
    let sockets = entries(Path::new(SOCKETS_BASE));
    if !sockets.is_empty() {
        left.push(format!("socket dirs {sockets:?}"));
    }
    let mounts = runm_mounts(runm, bundle);
    if !mounts.is_empty() {
        left.push(format!("mounts {mounts:?}"));
    }
    if !left.is_empty() {
        let _ = run_timed(runm.command(&["delete", "--force", id]), RUNC_DEADLINE);
        for pid in processes_left() {
            let _ = send_signal(pid, "KILL");
        }
        unmount_under(bundle);
        unmount_under(runm.root());
        for dir in entries(runm.root())
            .into_iter()
            .chain(entries(Path::new(SOCKETS_BASE)))
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    left
}

/// Whether runm's answer is runc's, or an acceptable refusal: Ok(how) or Err(why not).
/// Paths under `tmp` do not count as naming anything.
fn judge(case: &Case, runc: &Outcome, runm: &Outcome, tmp: &Path) -> Result<String, String> {
    let Some(code) = runm.code else {
        return Err(format!("runm did not answer within {RUNM_DEADLINE:?}"));
    };
    let said = runm
        .stderr
        .replace(tmp.to_str().expect("utf-8 path"), "<tmp>");
    let named = case.names.split('|').any(|n| said.contains(n));
    let same = runm.code == runc.code && runm.stdout == runc.stdout;
    if runc.ok() {
        if same {
            return Ok("same answer".into());
        }
        return match case.leeway {
            Leeway::MayRefuse(why) if code != 0 && named => Ok(format!("refuses: {why}")),
            Leeway::MayRefuse(_) if code != 0 => Err(format!(
                "runm refuses, but its error does not name `{}`",
                case.names
            )),
            _ if code == 0 => Err("runm runs it, but its output differs from runc's".into()),
            _ => Err("runc runs it, runm refuses it".into()),
        };
    }
    // runc failed. The container's own failure (runc said nothing) must be the same.
    if same && runc.stderr.trim().is_empty() {
        return Ok("same failure of the container".into());
    }
    if code == 0 {
        return match case.leeway {
            Leeway::MayRun(why) => Ok(format!("runs: {why}")),
            _ => Err("runc refuses it, runm runs it".into()),
        };
    }
    if named {
        Ok("both refuse; runm names the field".into())
    } else {
        Err(format!(
            "both refuse, but runm's error does not name `{}`",
            case.names
        ))
    }
}

fn runc_bin() -> PathBuf {
    let path = PathBuf::from("/usr/sbin/runc");
    assert!(
        path.is_file(),
        "{} is missing: this test compares runm with runc (`make deps` installs it)",
        path.display()
    );
    path
}

struct Row {
    name: &'static str,
    runc: Outcome,
    runm: Outcome,
    verdict: Result<String, String>,
}

#[test]
fn malformed_bundles_get_runcs_answer_or_a_named_error_and_leave_nothing() {
    require_kvm();
    let _vm = vm_lock();
    let runc = runc_bin();
    // runc sets a blockIO weight through BFQ (io.bfq.weight), a module in Debian's kernel.
    let bfq = Command::new("modprobe").arg("bfq").status();
    assert!(
        bfq.is_ok_and(|s| s.success()),
        "modprobe bfq: the blockio_weight case needs the BFQ scheduler on the host"
    );
    let tmp = TempDir::new("malformed");
    let runm = Runm::new(&tmp);
    let runc_root = tmp.join("runc-state");
    let cases = corpus();
    assert!(cases.len() >= 40, "the corpus has {} cases", cases.len());
    let only = std::env::var("RUNM_CORPUS_ONLY").ok();
    let mut rows = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|o| o == case.name))
        {
            continue;
        }
        let id = format!("corpus-{n}");
        // Two copies, so that neither runtime sees what the other wrote into the rootfs.
        // Named by number: a case's name would match the field words looked for.
        let runc_bundle = bundle(&tmp, &format!("{n}.runc"), case);
        let runm_bundle = bundle(&tmp, &format!("{n}.runm"), case);
        let mut cmd = Command::new(&runc);
        cmd.arg("--root")
            .arg(&runc_root)
            .args(["run", "--bundle"])
            .arg(&runc_bundle)
            .arg(&id);
        // Said before each command, so that a hang (or a wedged test host) shows where.
        println!("corpus: {} ...", case.name);
        let runc_out = run_timed(cmd, RUNC_DEADLINE);
        let mut cmd = Command::new(&runc);
        cmd.arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force", &id]);
        let _ = run_timed(cmd, RUNC_DEADLINE);
        // runc without a mount namespace (no `linux`) mounts into this one, and leaves it.
        unmount_under(&runc_bundle);
        let bundle_s = runm_bundle.to_str().expect("utf-8 path");
        println!(
            "corpus: {} runc done ({:.1}s); runm ...",
            case.name, runc_out.secs
        );
        let runm_out = run_timed(
            runm.command(&["run", "--bundle", bundle_s, &id]),
            RUNM_DEADLINE,
        );
        let left = leftovers(&runm, &id, &runm_bundle);
        let mut verdict = judge(case, &runc_out, &runm_out, &tmp.0);
        if !left.is_empty() {
            let was = verdict.unwrap_or_else(|e| e);
            verdict = Err(format!("left behind: {}; ({was})", left.join(", ")));
        }
        println!(
            "corpus: {} {}\n    runc {:>5.1}s: {}\n    runm {:>5.1}s: {}",
            case.name,
            match &verdict {
                Ok(how) => format!("pass ({how})"),
                Err(why) => format!("FAIL: {why}"),
            },
            runc_out.secs,
            runc_out.brief(),
            runm_out.secs,
            runm_out.brief()
        );
        rows.push(Row {
            name: case.name,
            runc: runc_out,
            runm: runm_out,
            verdict,
        });
    }

    println!(
        "\n{:<36} | {:<60} | {:<66} | verdict",
        "case", "runc", "runm"
    );
    for r in &rows {
        let verdict = match &r.verdict {
            Ok(how) => format!("pass ({how})"),
            Err(why) => format!("FAIL: {why}"),
        };
        println!(
            "{:<36} | {:<60} | {:<59} {:>5.1}s | {verdict}",
            r.name,
            r.runc.brief().chars().take(60).collect::<String>(),
            r.runm.brief().chars().take(59).collect::<String>(),
            r.runm.secs
        );
    }
    let failed: Vec<&Row> = rows.iter().filter(|r| r.verdict.is_err()).collect();
    for r in &failed {
        println!(
            "\n--- {} ---\n  verdict: {}\n  runc: {}\n  runm: {}",
            r.name,
            r.verdict.as_ref().err().map_or("", String::as_str),
            r.runc.full(),
            r.runm.full()
        );
    }
    println!(
        "\ncorpus: {} of {} cases pass",
        rows.len() - failed.len(),
        rows.len()
    );
    let names: Vec<&str> = failed.iter().map(|r| r.name).collect();
    assert!(failed.is_empty(), "cases runm fails: {names:?}");
}
