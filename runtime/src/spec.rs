//! The bundle's `config.json`: loading it with errors that name the field, checking
//! what runm needs, and deriving what goes to the guest and how big the VM is.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

mod nspath;
mod size;
mod validate;

pub use size::HostLimits;

/// The OCI runtime spec version runm implements.
pub const OCI_VERSION: &str = "1.2.0";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {}: {source}", .0.display(), source = .1)]
    Bundle(PathBuf, std::io::Error),
    #[error("{}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: field `{field}`: {message}", .path.display())]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{0}: {1}")]
    Invalid(String, String),
}

/// A loaded bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// Loads and checks `<dir>/config.json`.
    pub fn load(dir: &Path) -> Result<Self, SpecError> {
        let dir = dir
            .canonicalize()
            .map_err(|e| SpecError::Bundle(dir.to_path_buf(), e))?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|source| SpecError::Read {
            path: path.clone(),
            source,
        })?;
        let spec: Spec = parse_json(&path, &text)?;
        let bundle = Self { dir, spec };
        bundle.check(&path)?;
        Ok(bundle)
    }

    fn check(&self, path: &Path) -> Result<(), SpecError> {
        let field = |field: &str, message: String| SpecError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            message,
        };
        let process = self
            .spec
            .process()
            .as_ref()
            .ok_or_else(|| field("process", "missing; a container needs a process".into()))?;
        check_process(process).map_err(|(f, m)| field(&format!("process.{f}"), m))?;
        validate::oci_version(&self.spec)
            .and_then(|()| validate::namespaces(&self.spec))
            .and_then(|()| validate::rootfs_propagation(&self.spec))
            .and_then(|()| validate::memory(&self.spec))
            .map_err(|(f, m)| field(&f, m))?;
        let rootfs = self.rootfs()?;
        let block_root = self
            .annotations()
            .contains_key(crate::mounts::ANNOTATION_ROOTFS_BLOCK);
        if !block_root && !rootfs.is_dir() {
            return Err(field(
                "root.path",
                format!("{} is not a directory", rootfs.display()),
            ));
        }
        Ok(())
    }

    /// The rootfs directory on the host.
    pub fn rootfs(&self) -> Result<PathBuf, SpecError> {
        let root = self.spec.root().as_ref().ok_or_else(|| SpecError::Field {
            path: self.dir.join("config.json"),
            field: "root".into(),
            message: "missing".into(),
        })?;
        Ok(self.dir.join(root.path()))
    }

    pub fn readonly_root(&self) -> bool {
        self.spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false)
    }

    /// Warnings for the namespaces the config shares with another runm container by
    /// path: that container runs in another VM, so this one gets a namespace of its own.
    pub fn namespace_warnings(&self) -> Vec<String> {
        let listed = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default();
        listed
            .iter()
            .enumerate()
            .filter_map(|(i, ns)| {
                let path = ns.path().as_ref()?;
                let name = validate::type_name(ns.typ());
                match nspath::check(ns.typ(), &name, path) {
                    Ok(nspath::NsPath::OtherContainer { pid }) => Some(format!(
                        "linux.namespaces[{i}].path: {} is the {name} namespace of another \
                         runm container (host process {pid}), which runs in a microVM of its \
                         own; this container gets a {name} namespace of its own",
                        path.display()
                    )),
                    _ => None,
                }
            })
            .collect()
    }

    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    pub fn annotations(&self) -> std::collections::HashMap<String, String> {
        self.spec.annotations().clone().unwrap_or_default()
    }

    /// The config as the guest applies it: hooks run on the host, so they are removed, and
    /// `mounts` replace the bundle's (bind sources rewritten to their guest paths).
    pub fn guest_spec(
        &self,
        mounts: Vec<oci_spec::runtime::Mount>,
    ) -> Result<serde_json::Value, SpecError> {
        let mut spec = self.spec.clone();
        spec.set_hooks(None);
        spec.set_process(spec.process().clone().map(without_host_lsm));
        spec.set_mounts(Some(mounts));
        serde_json::to_value(&spec)
            .map_err(|e| SpecError::Invalid("config.json".into(), e.to_string()))
    }
}

/// Parses any OCI JSON document (`config.json`, `process.json`), naming the bad field.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    text: &[u8],
) -> Result<T, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        SpecError::Field {
            path: path.to_path_buf(),
            field: if field == "." {
                "(top level)".into()
            } else {
                field
            },
            message: inner.to_string(),
        }
    })
}

/// The process without the host's LSM settings: an AppArmor profile or SELinux label
/// names a policy of the host's kernel (Docker asks for `docker-default` wherever the
/// host has AppArmor), which the guest kernel has not; the VM is the boundary there, as
/// with Kata. Dropped with a warning rather than failing every such client.
pub fn without_host_lsm(mut process: Process) -> Process {
    if let Some(profile) = process
        .apparmor_profile()
        .as_deref()
        .filter(|p| !p.is_empty())
    {
        log::warn!(
            "process.apparmorProfile {profile:?} is not applied: the guest kernel has no AppArmor"
        );
    }
    if let Some(label) = process.selinux_label().as_deref().filter(|l| !l.is_empty()) {
        log::warn!(
            "process.selinuxLabel {label:?} is not applied: the guest kernel has no SELinux"
        );
    }
    process.set_apparmor_profile(None);
    process.set_selinux_label(None);
    process
}

/// What every process needs: (field, problem) on failure.
pub fn check_process(process: &Process) -> Result<(), (String, String)> {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => return Err(("args".into(), "must name a program to run".into())),
    }
    if !process.cwd().is_absolute() {
        return Err((
            "cwd".into(),
            format!("{} is not an absolute path", process.cwd().display()),
        ));
    }
    validate::process(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn bundle_with(config: &str) -> (PathBuf, Result<Bundle, SpecError>) {
        let dir =
            std::env::temp_dir().join(format!("runm-spec-{}-{}", std::process::id(), config.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        let b = Bundle::load(&dir);
        (dir, b)
    }

    pub(super) fn default_config() -> serde_json::Value {
        let mut spec = serde_json::to_value(Spec::default()).unwrap();
        spec["root"]["path"] = "rootfs".into();
        spec
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let mut c = default_config();
        c["process"]["user"]["uid"] = "root".into();
        let (dir, b) = bundle_with(&c.to_string());
        let e = b.unwrap_err().to_string();
        assert!(e.contains("config.json: field `process.user.uid`"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_args_and_missing_rootfs_are_named() {
        let mut c = default_config();
        c["process"]["args"] = serde_json::json!([]);
        let (dir, b) = bundle_with(&c.to_string());
        assert!(b.unwrap_err().to_string().contains("`process.args`"));
        std::fs::remove_dir_all(dir).unwrap();
        let mut c = default_config();
        c["root"]["path"] = "nope-rootfs".into();
        let (dir, b) = bundle_with(&c.to_string());
        let e = b.unwrap_err().to_string();
        assert!(
            e.contains("`root.path`") && e.contains("nope-rootfs"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_bundle_is_named() {
        let e = Bundle::load(Path::new("/nonexistent-bundle")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-bundle"), "{e}");
    }

    #[test]
    fn hooks_stay_on_the_host() {
        let mut c = default_config();
        c["hooks"] = serde_json::json!({"poststart": [{"path": "/bin/true"}]});
        let (dir, b) = bundle_with(&c.to_string());
        let b = b.unwrap();
        let g = b
            .guest_spec(b.spec.mounts().clone().unwrap_or_default())
            .unwrap();
        assert!(g.get("hooks").is_none_or(|h| h.is_null()), "{g}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
