//! runm's own settings: `/etc/runm/config.toml` (or `$RUNM_CONFIG`), overridden by the
//! environment (`RUNM_KERNEL`, `RUNM_INITRD`, `RUNM_VIRTIOFSD`, `RUNM_NET_BACKEND`). Everything has a default, so a missing
//! file is fine; an unreadable or malformed one is an error that names it.
//!
//! ```toml
//! kernel = "/usr/local/lib/runm/vmlinux"
//! initrd = "/usr/local/lib/runm/initramfs.cpio"
//! boot_timeout_secs = 120
//! virtiofsd = "/usr/libexec/virtiofsd"
//! virtiofs_cache = "auto"     # never | metadata | auto | always
//! max_memory_mib = 3072       # the most memory a container's VM gets
//! net_backend = "auto"        # vhost | userspace | auto (vhost where /dev/vhost-net opens)
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

const DEFAULT_PATH: &str = "/etc/runm/config.toml";
/// Names another settings file.
pub const ENV_CONFIG: &str = "RUNM_CONFIG";
/// Override `kernel`, `initrd` and `virtiofsd`.
pub const ENV_KERNEL: &str = "RUNM_KERNEL";
pub const ENV_INITRD: &str = "RUNM_INITRD";
pub const ENV_VIRTIOFSD: &str = "RUNM_VIRTIOFSD";
/// Overrides `net_backend` (the network benchmark compares the two this way).
pub const ENV_NET_BACKEND: &str = "RUNM_NET_BACKEND";
const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 120;
const DEFAULT_MAX_MEMORY_MIB: u32 = 3072;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("{ENV_NET_BACKEND}={0:?}: expected vhost, userspace or auto")]
    NetBackendEnv(String),
}

/// What moves a container's network frames between its VM and the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetBackendChoice {
    /// The kernel's vhost-net where `/dev/vhost-net` can be opened, else the VMM.
    #[default]
    Auto,
    Vhost,
    Userspace,
}

impl NetBackendChoice {
    fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.into())).ok()
    }

    /// The backend to use on this host.
    pub fn resolve(self) -> vmm::NetBackend {
        match self {
            Self::Vhost => vmm::NetBackend::Vhost,
            Self::Userspace => vmm::NetBackend::Userspace,
            Self::Auto => {
                let opens = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/vhost-net")
                    .is_ok();
                if opens {
                    vmm::NetBackend::Vhost
                } else {
                    log::debug!("/dev/vhost-net cannot be opened: the VMM moves network frames");
                    vmm::NetBackend::Userspace
                }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub boot_timeout_secs: Option<u64>,
    pub virtiofsd: Option<PathBuf>,
    pub virtiofs_cache: Option<crate::virtiofs::CacheMode>,
    pub max_memory_mib: Option<u32>,
    pub net_backend: Option<NetBackendChoice>,
}

impl Config {
    pub fn load() -> Result<Self, ConfigError> {
        let mut config = Self::from_file(&Self::path())?;
        config.apply_env();
        if let Some(v) = std::env::var_os(ENV_NET_BACKEND) {
            let v = v.to_string_lossy();
            let choice =
                NetBackendChoice::parse(&v).ok_or_else(|| ConfigError::NetBackendEnv(v.into()))?;
            config.net_backend = Some(choice);
        }
        Ok(config)
    }

    /// The settings file: `$RUNM_CONFIG`, else `/etc/runm/config.toml`.
    pub fn path() -> PathBuf {
        std::env::var_os(ENV_CONFIG)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
    }

    /// Lets the environment override the file's paths.
    pub fn apply_env(&mut self) {
        if let Some(k) = std::env::var_os(ENV_KERNEL) {
            self.kernel = Some(k.into());
        }
        if let Some(i) = std::env::var_os(ENV_INITRD) {
            self.initrd = Some(i.into());
        }
        if let Some(v) = std::env::var_os(ENV_VIRTIOFSD) {
            self.virtiofsd = Some(v.into());
        }
    }

    /// The settings in `path` alone (no environment); defaults if it does not exist.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// What a container's VM may get on this host.
    pub fn host_limits(&self) -> crate::spec::HostLimits {
        crate::spec::HostLimits::of_host(self.max_memory_mib.unwrap_or(DEFAULT_MAX_MEMORY_MIB))
    }

    pub fn net_backend(&self) -> vmm::NetBackend {
        self.net_backend.unwrap_or_default().resolve()
    }

    pub fn boot_timeout(&self) -> Duration {
        Duration::from_secs(self.boot_timeout_secs.unwrap_or(DEFAULT_BOOT_TIMEOUT_SECS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_values_and_errors() {
        let dir = std::env::temp_dir().join(format!("runm-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.toml");
        assert!(Config::from_file(&p).unwrap().kernel.is_none());
        std::fs::write(&p, "kernel = \"/k\"\nboot_timeout_secs = 5\n").unwrap();
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.kernel, Some(PathBuf::from("/k")));
        assert_eq!(c.boot_timeout(), Duration::from_secs(5));
        std::fs::write(&p, "virtiofs_cache = \"always\"\n").unwrap();
        let c = Config::from_file(&p).unwrap();
        assert_eq!(c.virtiofs_cache, Some(crate::virtiofs::CacheMode::Always));
        std::fs::write(&p, "virtiofs_cache = \"sometimes\"\n").unwrap();
        let e = Config::from_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("virtiofs_cache") || e.contains("sometimes"),
            "{e}"
        );
        std::fs::write(&p, "kernal = \"/k\"\n").unwrap();
        let e = Config::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("config.toml") && e.contains("kernal"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
