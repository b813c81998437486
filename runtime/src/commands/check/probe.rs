//! What `runm check` finds out about the host, gathered without judging it.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::unistd::{AccessFlags, Gid, Group, Uid, User};

use super::{Setting, INITRD, KERNEL, VIRTIOFSD};
use crate::config::{Config, ConfigError};
use crate::guest_assets::{self, Asset, LocateError};

pub(super) const KVM_DEVICE: &str = "/dev/kvm";
/// Present when `/dev/kvm` is served by PVM, which runs only PVM-aware guest kernels.
const PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// What was found out about the host.
#[derive(Debug)]
pub(super) struct Facts {
    pub kvm: KvmFacts,
    pub config: ConfigFacts,
    pub kernel: AssetFacts<FileHead>,
    pub initramfs: AssetFacts<FileHead>,
    /// virtiofsd's `--version` line.
    pub virtiofsd: AssetFacts<String>,
    pub euid: u32,
    pub state_root: StateRootFacts,
}

#[derive(Debug)]
pub(super) struct KvmFacts {
    /// `/dev/kvm`'s owner; `None` when it does not exist.
    pub node: Option<DeviceNode>,
    /// Whether this user may read and write it (with the effective ids, as open(2)).
    pub access: Result<(), Errno>,
    /// Whether PVM serves `/dev/kvm`.
    pub pvm: bool,
    /// `vmx` or `svm`, when /proc/cpuinfo shows one.
    pub cpu_virt: Option<&'static str>,
    /// KVM's API version once a VM was created, or why none could be; `None` when
    /// none was tried (no access).
    pub vm: Option<Result<i32, String>>,
}

#[derive(Debug)]
pub(super) struct DeviceNode {
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

#[derive(Debug)]
pub(super) struct ConfigFacts {
    pub path: PathBuf,
    pub exists: bool,
    /// Why it cannot be used.
    pub error: Option<String>,
}

/// Where runm's path for a file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Env,
    ConfigFile,
    /// Looked for where `make` and `make install` put it.
    Search,
}

#[derive(Debug)]
pub(super) struct AssetFacts<T> {
    pub origin: Origin,
    pub found: Probed<T>,
}

#[derive(Debug)]
pub(super) enum Probed<T> {
    Missing(LocateError),
    /// Found, but it cannot be read (or run).
    Unusable {
        path: PathBuf,
        error: String,
    },
    Usable {
        path: PathBuf,
        info: T,
    },
}

#[derive(Debug)]
pub(super) struct FileHead {
    pub size: u64,
    /// Its first bytes (up to 4).
    pub magic: Vec<u8>,
}

#[derive(Debug)]
pub(super) struct StateRootFacts {
    pub path: PathBuf,
    /// The state root itself, or its nearest existing ancestor (where it would be
    /// created).
    pub existing: PathBuf,
    pub is_dir: bool,
    /// Whether this user may create entries in `existing`.
    pub writable: Result<(), Errno>,
}

impl Facts {
    /// Looks at the host as `runm run` would use it, with `state_root` as `--root`.
    pub fn probe(state_root: &Path) -> Self {
        let config_path = Config::path();
        let (error, file) = match Config::from_file(&config_path) {
            Ok(file) => (None, file),
            Err(e) => (Some(config_error(&e)), Config::default()),
        };
        let config = ConfigFacts {
            exists: config_path.exists(),
            path: config_path,
            error,
        };
        let kernel = origin(KERNEL, file.kernel.is_some());
        let initrd = origin(INITRD, file.initrd.is_some());
        let virtiofsd = origin(VIRTIOFSD, file.virtiofsd.is_some());
        let mut settings = file;
        settings.apply_env();
        Self {
            kvm: probe_kvm(),
            config,
            kernel: AssetFacts {
                origin: kernel,
                found: probe_file(Asset::Kernel, settings.kernel),
            },
            initramfs: AssetFacts {
                origin: initrd,
                found: probe_file(Asset::Initramfs, settings.initrd),
            },
            virtiofsd: AssetFacts {
                origin: virtiofsd,
                found: probe_virtiofsd(settings.virtiofsd),
            },
            euid: Uid::effective().as_raw(),
            state_root: probe_state_root(state_root),
        }
    }
}

/// A settings-file error on one line: TOML's message and the line it is about, without
/// the excerpt of the file TOML's own message shows below.
fn config_error(e: &ConfigError) -> String {
    match e {
        ConfigError::Parse { path, source } => {
            let line = source.span().and_then(|span| {
                let text = std::fs::read_to_string(path).ok()?;
                Some(text.get(..span.start)?.matches('\n').count() + 1)
            });
            let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
            format!("{}{at}: {}", path.display(), source.message().trim())
        }
        ConfigError::Read { .. } | ConfigError::NetBackendEnv(_) => e.to_string(),
    }
}

fn origin(setting: Setting, in_file: bool) -> Origin {
    if std::env::var_os(setting.env).is_some() {
        Origin::Env
    } else if in_file {
        Origin::ConfigFile
    } else {
        Origin::Search
    }
}

pub(super) fn probe_kvm() -> KvmFacts {
    let node = std::fs::metadata(KVM_DEVICE).ok().map(|m| DeviceNode {
        owner: User::from_uid(Uid::from_raw(m.uid()))
            .ok()
            .flatten()
            .map_or_else(|| m.uid().to_string(), |u| u.name),
        group: Group::from_gid(Gid::from_raw(m.gid()))
            .ok()
            .flatten()
            .map_or_else(|| m.gid().to_string(), |g| g.name),
        mode: m.mode() & 0o7777,
    });
    let access = nix::unistd::eaccess(KVM_DEVICE, AccessFlags::R_OK | AccessFlags::W_OK);
    let vm = (node.is_some() && access.is_ok()).then(|| {
        vmm::vstate::vm::Vm::new()
            .map(|vm| vm.kvm().get_api_version())
            .map_err(|e| e.to_string())
    });
    KvmFacts {
        node,
        access,
        pvm: Path::new(PVM_MODULE).exists(),
        cpu_virt: cpu_virtualization(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        vm,
    }
}

/// `vmx` or `svm` if a `flags` line of /proc/cpuinfo has it.
fn cpu_virtualization(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(str::split_whitespace);
    for flag in flags {
        match flag {
            "vmx" => return Some("vmx"),
            "svm" => return Some("svm"),
            _ => {}
        }
    }
    None
}

fn probe_file(asset: Asset, explicit: Option<PathBuf>) -> Probed<FileHead> {
    let path = match guest_assets::locate(asset, explicit) {
        Ok(path) => path,
        Err(e) => return Probed::Missing(e),
    };
    match read_head(&path) {
        Ok(info) => Probed::Usable { path, info },
        Err(e) => Probed::Unusable {
            path,
            error: e.to_string(),
        },
    }
}

fn read_head(path: &Path) -> std::io::Result<FileHead> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut magic = Vec::new();
    file.by_ref().take(4).read_to_end(&mut magic)?;
    Ok(FileHead { size, magic })
}

fn probe_virtiofsd(explicit: Option<PathBuf>) -> Probed<String> {
    let path = match guest_assets::locate(Asset::Virtiofsd, explicit) {
        Ok(path) => path,
        Err(e) => return Probed::Missing(e),
    };
    if let Err(e) = nix::unistd::eaccess(&path, AccessFlags::X_OK) {
        return Probed::Unusable {
            path,
            error: format!("not executable by this user ({e})"),
        };
    }
    let out = Command::new(&path)
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout);
            let version = version
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            Probed::Usable {
                path,
                info: version,
            }
        }
        Ok(out) => Probed::Unusable {
            error: format!(
                "`{} --version` failed ({}): {}",
                path.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            path,
        },
        Err(e) => Probed::Unusable {
            error: format!("cannot run it: {e}"),
            path,
        },
    }
}

fn probe_state_root(path: &Path) -> StateRootFacts {
    let existing = path
        .ancestors()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    StateRootFacts {
        path: path.to_path_buf(),
        is_dir: existing.is_dir(),
        writable: nix::unistd::eaccess(&existing, AccessFlags::W_OK | AccessFlags::X_OK),
        existing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_flags_are_read_from_the_flags_lines_only() {
        let amd = "model name\t: AMD EPYC svm-ish\nflags\t\t: fpu sse2 svm npt\n";
        assert_eq!(cpu_virtualization(amd), Some("svm"));
        assert_eq!(cpu_virtualization("flags\t: fpu vmx ept\n"), Some("vmx"));
        assert_eq!(
            cpu_virtualization("model name\t: svm\nflags\t: fpu sse2\n"),
            None
        );
        assert_eq!(cpu_virtualization(""), None);
    }

    #[test]
    fn the_probe_for_a_state_root_finds_where_it_would_be_created() {
        let facts = probe_state_root(Path::new("/proc/no/such/dir"));
        assert_eq!(facts.existing, Path::new("/proc"));
        let facts = probe_state_root(Path::new("no-such-relative-dir"));
        assert_eq!(facts.existing, Path::new("."));
    }

    #[test]
    fn a_config_files_error_is_one_line_naming_the_line() {
        let dir = std::env::temp_dir().join(format!("runm-check-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "kernel = \"/k\"\n\nkernal = \"/k\"\n").unwrap();
        let e = Config::from_file(&path).unwrap_err();
        let text = config_error(&e);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            text.starts_with(&format!(
                "{} line 3: unknown field `kernal`",
                path.display()
            )),
            "{text}"
        );
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn a_files_size_and_first_bytes_are_read() {
        let path = std::env::temp_dir().join(format!("runm-check-head-{}", std::process::id()));
        std::fs::write(&path, b"\x7fELF and more").unwrap();
        let head = read_head(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((head.size, head.magic.as_slice()), (13, &b"\x7fELF"[..]));
    }
}
