//! `runm check`: whether this host can run runm. One line per check, `ok` or `FAIL`,
//! each failure followed by what to do about it; exit status 0 when every check passed.
//!
//! Probing the host ([`probe`]) is kept apart from judging what was found ([`judge`], a
//! pure function), which the unit tests exercise with made-up facts.

mod probe;

use std::path::Path;

use crate::cli::GlobalOpts;
use crate::config;
use crate::guest_assets::{self, LocateError};
use probe::{
    AssetFacts, ConfigFacts, DeviceNode, Facts, FileHead, KvmFacts, Origin, Probed, StateRootFacts,
    KVM_DEVICE,
};

const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Runs every check, prints the report and returns the exit status.
pub fn check(global: &GlobalOpts) -> anyhow::Result<i32> {
    let checks = judge(&Facts::probe(&global.root));
    print!("{}", render(&checks));
    Ok(exit_status(&checks))
}

/// The outcome of one check.
#[derive(Debug, PartialEq, Eq)]
struct Check {
    subject: &'static str,
    verdict: Verdict,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Ok(String),
    Fail { problem: String, hint: String },
}

impl Check {
    fn ok(subject: &'static str, detail: impl Into<String>) -> Self {
        Self {
            subject,
            verdict: Verdict::Ok(detail.into()),
        }
    }

    fn fail(subject: &'static str, problem: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            subject,
            verdict: Verdict::Fail {
                problem: problem.into(),
                hint: hint.into(),
            },
        }
    }

    fn passed(&self) -> bool {
        matches!(self.verdict, Verdict::Ok(_))
    }
}

/// Why this host's `/dev/kvm` cannot boot runm's guest, in `runm check`'s words, if it
/// cannot: `create` refuses at once instead of failing seconds later with KVM's own
/// error (a PVM-backed `/dev/kvm` fails with "emulation failure" mid-boot).
pub fn kvm_unusable() -> Option<String> {
    let check = judge_kvm(&probe::probe_kvm(), nix::unistd::geteuid().as_raw());
    match check.verdict {
        Verdict::Ok(_) => None,
        Verdict::Fail { problem, hint } => Some(format!(
            "{}: {}; {} (`runm check` checks the whole host)",
            check.subject,
            one_line(&problem),
            one_line(&hint)
        )),
    }
}

/// One line per check; a failure's hint on the line below it.
fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for check in checks {
        let subject = check.subject;
        match &check.verdict {
            Verdict::Ok(detail) => {
                out.push_str(&format!("ok    {subject}: {}\n", one_line(detail)))
            }
            Verdict::Fail { problem, hint } => out.push_str(&format!(
                "FAIL  {subject}: {}\n      -> {}\n",
                one_line(problem),
                one_line(hint)
            )),
        }
    }
    out
}

/// `text` with its lines (an error from elsewhere may have several) joined by spaces.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join(" ")
}

fn exit_status(checks: &[Check]) -> i32 {
    if checks.iter().all(Check::passed) {
        0
    } else {
        1
    }
}

/// A setting naming a file runm needs: its key in the settings file and the
/// environment variable that overrides it (as `config.rs` reads them).
#[derive(Debug, Clone, Copy)]
struct Setting {
    key: &'static str,
    env: &'static str,
    /// What the file must be, for hints.
    what: &'static str,
    /// How to get one installed where runm looks by itself.
    install: &'static str,
}

const MAKE_INSTALL: &str = "run `make install` (or `make` in a runm checkout)";
const KERNEL: Setting = Setting {
    key: "kernel",
    env: config::ENV_KERNEL,
    what: "a guest kernel (vmlinux)",
    install: MAKE_INSTALL,
};
const INITRD: Setting = Setting {
    key: "initrd",
    env: config::ENV_INITRD,
    what: "runm's guest initramfs",
    install: MAKE_INSTALL,
};
const VIRTIOFSD: Setting = Setting {
    key: "virtiofsd",
    env: config::ENV_VIRTIOFSD,
    what: "virtiofsd",
    // The release `make` builds (the Makefile's VIRTIOFSD_VERSION), which runm is tested
    // with.
    install: "install it with `cargo install --locked virtiofsd@1.14.0` and put it beside \
              the runm binary",
};

/// Judges the facts: one check per line of the report, in this order.
fn judge(facts: &Facts) -> Vec<Check> {
    let config = &facts.config.path;
    vec![
        judge_kvm(&facts.kvm, facts.euid),
        judge_config(&facts.config),
        judge_kernel(&facts.kernel, config),
        judge_initramfs(&facts.initramfs, config),
        judge_virtiofsd(&facts.virtiofsd, config),
        judge_privileges(facts.euid),
        judge_state_root(&facts.state_root, facts.euid),
    ]
}

fn judge_kvm(kvm: &KvmFacts, euid: u32) -> Check {
    const S: &str = KVM_DEVICE;
    const NEEDS_VIRT: &str =
        "run runm on a host with VT-x/AMD-V (bare metal, or a VM with nested virtualization enabled)";
    let Some(node) = &kvm.node else {
        return Check::fail(
            S,
            "does not exist",
            "load KVM (`modprobe kvm_intel` or `modprobe kvm_amd`); in a VM, enable nested \
             virtualization",
        );
    };
    if kvm.pvm {
        return Check::fail(
            S,
            "backed by PVM (kvm_pvm), which cannot boot a normal Linux guest",
            NEEDS_VIRT,
        );
    }
    let Some(virt) = kvm.cpu_virt else {
        return Check::fail(
            S,
            "the CPU shows neither vmx (VT-x) nor svm (AMD-V) in /proc/cpuinfo, so KVM cannot \
             boot a normal Linux guest",
            NEEDS_VIRT,
        );
    };
    if let Err(e) = kvm.access {
        let DeviceNode { owner, group, mode } = node;
        return Check::fail(
            S,
            format!(
                "not readable and writable by uid {euid} ({e}; it is {owner}:{group}, mode \
                 {mode:04o})"
            ),
            format!(
                "add the user to the `{group}` group (`usermod -aG {group} USER`, then log in \
                 again), or run runm as root"
            ),
        );
    }
    match &kvm.vm {
        Some(Ok(api)) => {
            let cpu = if virt == "vmx" { "VT-x" } else { "AMD-V" };
            Check::ok(
                S,
                format!("KVM API {api}, can create a VM; the CPU has {cpu} ({virt})"),
            )
        }
        Some(Err(e)) => Check::fail(
            S,
            format!("cannot create a VM: {e}"),
            "see `dmesg` for why KVM refused (another hypervisor may hold VT-x/AMD-V)",
        ),
        // Not tried, which only an access failure (reported above) explains.
        None => Check::fail(S, "cannot be opened", "run runm as root"),
    }
}

fn judge_config(config: &ConfigFacts) -> Check {
    const S: &str = "config";
    let path = config.path.display();
    match (&config.error, config.exists) {
        (Some(e), _) => Check::fail(
            S,
            e.clone(),
            format!(
                "fix {path}, or move it away to use the defaults ({} names another file)",
                config::ENV_CONFIG
            ),
        ),
        (None, true) => Check::ok(S, path.to_string()),
        (None, false) => Check::ok(S, format!("{path} does not exist; using the defaults")),
    }
}

/// Where to point runm at the right file, or how to install one where it looks.
fn asset_hint(setting: Setting, origin: Origin, config: &Path) -> String {
    let Setting {
        key,
        env,
        what,
        install,
    } = setting;
    let config = config.display();
    match origin {
        Origin::Env => format!("set {env} to the path of {what}, or unset it"),
        Origin::ConfigFile => {
            format!("set `{key}` in {config} to the path of {what}, or remove it")
        }
        Origin::Search => {
            format!("{install}, or set `{key}` in {config} or {env} to the path of {what}")
        }
    }
}

/// Why a file was not found, naming the setting that named it.
fn missing_problem(e: &LocateError, setting: Setting, origin: Origin, config: &Path) -> String {
    match e {
        LocateError::NoSuchFile { path, .. } => {
            let from = match origin {
                Origin::Env => format!(" (from {})", setting.env),
                Origin::ConfigFile => format!(" (from `{}` in {})", setting.key, config.display()),
                Origin::Search => String::new(),
            };
            format!("{}: no such file{from}", path.display())
        }
        LocateError::NotFound { searched, .. } => {
            format!(
                "not found (looked in {})",
                guest_assets::path_list(searched)
            )
        }
        LocateError::CurrentExe(_) => e.to_string(),
    }
}

/// The checks that a found file, read or run, passes: `Ok(detail)` or the problem.
fn judge_asset<T>(
    subject: &'static str,
    facts: &AssetFacts<T>,
    setting: Setting,
    config: &Path,
    judge_found: impl Fn(&T) -> Result<String, String>,
) -> Check {
    let hint = || asset_hint(setting, facts.origin, config);
    match &facts.found {
        Probed::Missing(e) => Check::fail(
            subject,
            missing_problem(e, setting, facts.origin, config),
            hint(),
        ),
        Probed::Unusable { path, error } => Check::fail(
            subject,
            format!("{}: {error}", path.display()),
            format!("make {} usable by this user, or {}", path.display(), hint()),
        ),
        Probed::Usable { path, info } => match judge_found(info) {
            Ok(detail) => Check::ok(subject, format!("{} ({detail})", path.display())),
            Err(problem) => Check::fail(subject, format!("{} {problem}", path.display()), hint()),
        },
    }
}

fn judge_kernel(kernel: &AssetFacts<FileHead>, config: &Path) -> Check {
    judge_asset("guest kernel", kernel, KERNEL, config, |head| {
        if head.magic == ELF_MAGIC {
            Ok("ELF".into())
        } else {
            Err(
                "is not an ELF file (runm boots an uncompressed vmlinux with a PVH entry \
                 point, not a bzImage)"
                    .into(),
            )
        }
    })
}

fn judge_initramfs(initramfs: &AssetFacts<FileHead>, config: &Path) -> Check {
    judge_asset("guest initramfs", initramfs, INITRD, config, |head| {
        if head.size == 0 {
            Err("is empty".into())
        } else {
            Ok(size_text(head.size))
        }
    })
}

fn judge_virtiofsd(virtiofsd: &AssetFacts<String>, config: &Path) -> Check {
    judge_asset("virtiofsd", virtiofsd, VIRTIOFSD, config, |version| {
        // The Rust virtiofsd says `virtiofsd 1.14.0`; QEMU's older C one (still in some
        // distributions' /usr/lib/qemu) says `virtiofsd version 7.2.22 (...)` and takes
        // none of runm's options.
        let rust = version
            .strip_prefix("virtiofsd ")
            .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()));
        if rust {
            Ok(version.clone())
        } else {
            Err(format!(
                "is not the Rust virtiofsd (its --version says {version:?}); runm passes \
                 options such as --sandbox=namespace that QEMU's older C virtiofsd lacks"
            ))
        }
    })
}

fn judge_privileges(euid: u32) -> Check {
    const S: &str = "privileges";
    if euid == 0 {
        Check::ok(S, "running as root")
    } else {
        Check::fail(
            S,
            format!(
                "running as uid {euid}, but runm needs root today (virtiofsd's \
                 --sandbox=namespace, and the mounts it makes)"
            ),
            "run runm as root (e.g. with sudo)",
        )
    }
}

fn judge_state_root(root: &StateRootFacts, euid: u32) -> Check {
    const S: &str = "state root";
    let path = root.path.display();
    let existing = root.existing.display();
    let elsewhere = "pass another directory with --root";
    let as_root = if euid == 0 {
        elsewhere.to_string()
    } else {
        format!("run runm as root, or {elsewhere}")
    };
    let exists = root.existing == root.path;
    match (exists, root.is_dir, root.writable) {
        (true, false, _) => Check::fail(
            S,
            format!("{path} is not a directory"),
            format!("remove it, or {elsewhere}"),
        ),
        (false, false, _) => Check::fail(
            S,
            format!("{path} cannot be created: {existing} is not a directory"),
            elsewhere,
        ),
        (true, true, Err(e)) => Check::fail(
            S,
            format!("{path} is not writable by uid {euid} ({e})"),
            as_root,
        ),
        (false, true, Err(e)) => Check::fail(
            S,
            format!(
                "{path} does not exist and cannot be created: {existing} is not writable by \
                 uid {euid} ({e})"
            ),
            as_root,
        ),
        (true, true, Ok(())) => Check::ok(S, format!("{path} (writable)")),
        (false, true, Ok(())) => Check::ok(
            S,
            format!("{path} does not exist yet; it can be created in {existing}"),
        ),
    }
}

/// A file size for people: `512 bytes`, `12.5 KiB`, `3.2 MiB`.
fn size_text(size: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    let tenths = |unit: u64| (size.saturating_mul(10) + unit / 2) / unit;
    if size < KIB {
        format!("{size} bytes")
    } else if size < MIB {
        let t = tenths(KIB);
        format!("{}.{} KiB", t / 10, t % 10)
    } else {
        let t = tenths(MIB);
        format!("{}.{} MiB", t / 10, t % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_assets::Asset;
    use nix::errno::Errno;

    const CONFIG: &str = "/etc/runm/config.toml";

    fn usable_kvm() -> KvmFacts {
        KvmFacts {
            node: Some(DeviceNode {
                owner: "root".into(),
                group: "kvm".into(),
                mode: 0o660,
            }),
            access: Ok(()),
            pvm: false,
            cpu_virt: Some("svm"),
            vm: Some(Ok(12)),
        }
    }

    fn usable<T>(path: &str, info: T) -> AssetFacts<T> {
        AssetFacts {
            origin: Origin::Search,
            found: Probed::Usable {
                path: path.into(),
                info,
            },
        }
    }

    fn head(size: u64, magic: &[u8]) -> FileHead {
        FileHead {
            size,
            magic: magic.to_vec(),
        }
    }

    /// A host where runm can run.
    fn good_host() -> Facts {
        Facts {
            kvm: usable_kvm(),
            config: ConfigFacts {
                path: CONFIG.into(),
                exists: false,
                error: None,
            },
            kernel: usable("/usr/local/lib/runm/vmlinux", head(40 << 20, ELF_MAGIC)),
            initramfs: usable("/usr/local/lib/runm/initramfs.cpio", head(3 << 20, b"0707")),
            virtiofsd: usable("/usr/local/lib/runm/virtiofsd", "virtiofsd 1.14.0".into()),
            euid: 0,
            state_root: StateRootFacts {
                path: "/run/runm".into(),
                existing: "/run".into(),
                is_dir: true,
                writable: Ok(()),
            },
        }
    }

    /// The one failing check of `facts`: (subject, problem, hint).
    fn only_failure(facts: &Facts) -> (&'static str, String, String) {
        let failed: Vec<Check> = judge(facts).into_iter().filter(|c| !c.passed()).collect();
        let [check] = <[Check; 1]>::try_from(failed)
            .unwrap_or_else(|failed| panic!("expected one failure, got {failed:?}"));
        let Verdict::Fail { problem, hint } = check.verdict else {
            unreachable!("only failures were kept")
        };
        (check.subject, problem, hint)
    }

    #[test]
    fn a_good_host_passes_every_check_and_exits_0() {
        let checks = judge(&good_host());
        assert_eq!(
            render(&checks),
            "\
ok    /dev/kvm: KVM API 12, can create a VM; the CPU has AMD-V (svm)
ok    config: /etc/runm/config.toml does not exist; using the defaults
ok    guest kernel: /usr/local/lib/runm/vmlinux (ELF)
ok    guest initramfs: /usr/local/lib/runm/initramfs.cpio (3.0 MiB)
ok    virtiofsd: /usr/local/lib/runm/virtiofsd (virtiofsd 1.14.0)
ok    privileges: running as root
ok    state root: /run/runm does not exist yet; it can be created in /run
"
        );
        assert_eq!(exit_status(&checks), 0);
    }

    #[test]
    fn a_failure_is_followed_by_its_hint_and_exits_1() {
        let mut facts = good_host();
        facts.euid = 1000;
        let checks = judge(&facts);
        let report = render(&checks);
        assert!(
            report.contains(
                "FAIL  privileges: running as uid 1000, but runm needs root today \
                 (virtiofsd's --sandbox=namespace, and the mounts it makes)\n      -> run runm \
                 as root (e.g. with sudo)\n"
            ),
            "{report}"
        );
        assert_eq!(exit_status(&checks), 1);
        // One line per check, and one hint line per failure.
        assert_eq!(report.lines().count(), checks.len() + 1);
    }

    #[test]
    fn a_message_of_several_lines_is_reported_on_one() {
        let mut facts = good_host();
        facts.virtiofsd.found = Probed::Unusable {
            path: "/v".into(),
            error: "`/v --version` failed (exit status: 1): first\n  second\n".into(),
        };
        let report = render(&judge(&facts));
        assert!(
            report.contains("FAIL  virtiofsd: /v: `/v --version` failed (exit status: 1): first second\n      -> "),
            "{report}"
        );
        assert_eq!(report.lines().count(), 8, "{report}");
    }

    #[test]
    fn pvm_is_named_even_though_it_answers_the_kvm_api() {
        let mut facts = good_host();
        facts.kvm.pvm = true;
        facts.kvm.cpu_virt = None;
        let (subject, problem, hint) = only_failure(&facts);
        assert_eq!(subject, "/dev/kvm");
        assert_eq!(
            problem,
            "backed by PVM (kvm_pvm), which cannot boot a normal Linux guest"
        );
        assert!(hint.contains("VT-x/AMD-V"), "{hint}");
    }

    #[test]
    fn a_cpu_without_vmx_or_svm_is_named() {
        let mut facts = good_host();
        facts.kvm.cpu_virt = None;
        let (_, problem, hint) = only_failure(&facts);
        assert!(
            problem.contains("neither vmx (VT-x) nor svm (AMD-V)"),
            "{problem}"
        );
        assert!(hint.contains("nested virtualization"), "{hint}");
    }

    #[test]
    fn a_missing_kvm_device_is_named() {
        let mut facts = good_host();
        facts.kvm.node = None;
        facts.kvm.access = Err(Errno::ENOENT);
        facts.kvm.vm = None;
        let (subject, problem, hint) = only_failure(&facts);
        assert_eq!((subject, problem.as_str()), ("/dev/kvm", "does not exist"));
        assert!(hint.contains("modprobe kvm_intel"), "{hint}");
    }

    #[test]
    fn no_access_to_kvm_names_its_group() {
        let mut facts = good_host();
        facts.euid = 1000;
        facts.kvm.access = Err(Errno::EACCES);
        facts.kvm.vm = None;
        let check = judge_kvm(&facts.kvm, facts.euid);
        assert_eq!(
            check,
            Check::fail(
                "/dev/kvm",
                "not readable and writable by uid 1000 (EACCES: Permission denied; it is \
                 root:kvm, mode 0660)",
                "add the user to the `kvm` group (`usermod -aG kvm USER`, then log in again), \
                 or run runm as root"
            )
        );
    }

    #[test]
    fn a_vm_kvm_refuses_is_reported_with_kvms_reason() {
        let mut facts = good_host();
        facts.kvm.vm = Some(Err("KVM_CREATE_VM failed: Device or resource busy".into()));
        let (_, problem, hint) = only_failure(&facts);
        assert_eq!(
            problem,
            "cannot create a VM: KVM_CREATE_VM failed: Device or resource busy"
        );
        assert!(hint.contains("dmesg"), "{hint}");
    }

    #[test]
    fn a_kernel_set_in_the_environment_but_missing_names_the_variable() {
        let mut facts = good_host();
        facts.kernel = AssetFacts {
            origin: Origin::Env,
            found: Probed::Missing(LocateError::NoSuchFile {
                asset: Asset::Kernel,
                path: "/tmp/vmlinux".into(),
            }),
        };
        let (subject, problem, hint) = only_failure(&facts);
        assert_eq!(subject, "guest kernel");
        assert_eq!(problem, "/tmp/vmlinux: no such file (from RUNM_KERNEL)");
        assert_eq!(
            hint,
            "set RUNM_KERNEL to the path of a guest kernel (vmlinux), or unset it"
        );
    }

    #[test]
    fn an_initramfs_set_in_the_config_file_but_missing_names_the_key() {
        let mut facts = good_host();
        facts.initramfs = AssetFacts {
            origin: Origin::ConfigFile,
            found: Probed::Missing(LocateError::NoSuchFile {
                asset: Asset::Initramfs,
                path: "/i.cpio".into(),
            }),
        };
        let (subject, problem, hint) = only_failure(&facts);
        assert_eq!(subject, "guest initramfs");
        assert_eq!(
            problem,
            "/i.cpio: no such file (from `initrd` in /etc/runm/config.toml)"
        );
        assert_eq!(
            hint,
            "set `initrd` in /etc/runm/config.toml to the path of runm's guest initramfs, or \
             remove it"
        );
    }

    #[test]
    fn a_kernel_not_found_anywhere_lists_where_runm_looked_and_how_to_install_one() {
        let mut facts = good_host();
        facts.kernel.found = Probed::Missing(LocateError::NotFound {
            asset: Asset::Kernel,
            searched: vec!["/a/vmlinux".into(), "/b/vmlinux".into()],
        });
        let (_, problem, hint) = only_failure(&facts);
        assert_eq!(problem, "not found (looked in /a/vmlinux, /b/vmlinux)");
        assert_eq!(
            hint,
            "run `make install` (or `make` in a runm checkout), or set `kernel` in \
             /etc/runm/config.toml or RUNM_KERNEL to the path of a guest kernel (vmlinux)"
        );
    }

    #[test]
    fn a_kernel_that_is_not_elf_is_named() {
        let mut facts = good_host();
        facts.kernel = usable("/boot/vmlinuz", head(8 << 20, b"MZ\xea\x07"));
        let (_, problem, _) = only_failure(&facts);
        assert!(
            problem.starts_with("/boot/vmlinuz is not an ELF file"),
            "{problem}"
        );
    }

    #[test]
    fn an_empty_initramfs_or_an_unreadable_file_fails() {
        let mut facts = good_host();
        facts.initramfs = usable("/i.cpio", head(0, b""));
        assert_eq!(only_failure(&facts).1, "/i.cpio is empty");
        let mut facts = good_host();
        facts.kernel.found = Probed::Unusable {
            path: "/k".into(),
            error: "Permission denied (os error 13)".into(),
        };
        let (_, problem, hint) = only_failure(&facts);
        assert_eq!(problem, "/k: Permission denied (os error 13)");
        assert!(
            hint.starts_with("make /k usable by this user, or "),
            "{hint}"
        );
    }

    #[test]
    fn a_missing_virtiofsd_says_how_to_install_it() {
        let mut facts = good_host();
        facts.virtiofsd.found = Probed::Missing(LocateError::NotFound {
            asset: Asset::Virtiofsd,
            searched: vec!["/usr/libexec/virtiofsd".into()],
        });
        let (subject, _, hint) = only_failure(&facts);
        assert_eq!(subject, "virtiofsd");
        assert!(
            hint.contains("cargo install --locked virtiofsd@1.14.0"),
            "{hint}"
        );
        assert!(
            hint.contains("`virtiofsd`") && hint.contains("RUNM_VIRTIOFSD"),
            "{hint}"
        );
    }

    #[test]
    fn qemus_old_c_virtiofsd_is_refused() {
        let mut facts = good_host();
        facts.virtiofsd = usable(
            "/usr/lib/qemu/virtiofsd",
            "virtiofsd version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)".into(),
        );
        let (subject, problem, hint) = only_failure(&facts);
        assert_eq!(subject, "virtiofsd");
        assert!(
            problem.starts_with("/usr/lib/qemu/virtiofsd is not the Rust virtiofsd"),
            "{problem}"
        );
        assert!(hint.contains("cargo install"), "{hint}");
    }

    #[test]
    fn a_malformed_config_file_fails() {
        let mut facts = good_host();
        facts.config.exists = true;
        facts.config.error = Some("/etc/runm/config.toml: unknown field `kernal`".into());
        let (subject, problem, hint) = only_failure(&facts);
        assert_eq!(subject, "config");
        assert_eq!(problem, "/etc/runm/config.toml: unknown field `kernal`");
        assert!(hint.contains("RUNM_CONFIG"), "{hint}");
    }

    #[test]
    fn the_state_root_must_be_a_writable_directory_or_creatable() {
        let root = |existing: &str, is_dir, writable| StateRootFacts {
            path: "/run/runm".into(),
            existing: existing.into(),
            is_dir,
            writable,
        };
        let verdict = |r: &StateRootFacts, euid| judge_state_root(r, euid).verdict;
        assert_eq!(
            verdict(&root("/run/runm", true, Ok(())), 0),
            Verdict::Ok("/run/runm (writable)".into())
        );
        assert_eq!(
            verdict(&root("/run/runm", false, Ok(())), 0),
            Verdict::Fail {
                problem: "/run/runm is not a directory".into(),
                hint: "remove it, or pass another directory with --root".into()
            }
        );
        assert_eq!(
            verdict(&root("/run", true, Err(Errno::EACCES)), 1000),
            Verdict::Fail {
                problem: "/run/runm does not exist and cannot be created: /run is not \
                          writable by uid 1000 (EACCES: Permission denied)"
                    .into(),
                hint: "run runm as root, or pass another directory with --root".into()
            }
        );
        assert_eq!(
            verdict(&root("/run/runm", true, Err(Errno::EROFS)), 0),
            Verdict::Fail {
                problem: "/run/runm is not writable by uid 0 (EROFS: Read-only file system)".into(),
                hint: "pass another directory with --root".into()
            }
        );
        assert!(!judge_state_root(&root("/run", false, Ok(())), 0).passed());
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size_text(0), "0 bytes");
        assert_eq!(size_text(1023), "1023 bytes");
        assert_eq!(size_text(1536), "1.5 KiB");
        assert_eq!(size_text(3 << 20), "3.0 MiB");
    }
}
