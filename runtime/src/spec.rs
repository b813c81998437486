//! The bundle's `config.json`: loading it with errors that name the field, checking
//! what runm needs, and deriving what goes to the guest and how big the VM is.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, Spec};

/// The OCI runtime spec version runm implements.
pub const OCI_VERSION: &str = "1.2.0";
/// Annotations that size the VM, overriding what the resources imply.
pub const ANNOTATION_VCPUS: &str = "io.runm.vm.vcpus";
pub const ANNOTATION_MEMORY_MIB: &str = "io.runm.vm.memory_mib";

const DEFAULT_VCPUS: u8 = 1;
const MAX_VCPUS: u8 = 32;
const DEFAULT_MEMORY_MIB: u32 = 512;
/// Guest memory beyond the container's limit: kernel, agent, page cache.
const MEMORY_OVERHEAD_MIB: u32 = 128;
const MAX_MEMORY_MIB: u32 = 3072;

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
        spec.set_mounts(Some(mounts));
        serde_json::to_value(&spec)
            .map_err(|e| SpecError::Invalid("config.json".into(), e.to_string()))
    }

    /// vCPUs and memory (MiB): annotations win, else the CPU quota and memory limit.
    pub fn vm_size(&self) -> Result<(u8, u32), SpecError> {
        let annotations = self.annotations();
        let resources = self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().clone());
        let mut vcpus = DEFAULT_VCPUS;
        let mut mem = DEFAULT_MEMORY_MIB;
        if let Some(cpu) = resources.as_ref().and_then(|r| r.cpu().clone()) {
            if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
                if quota > 0 && period > 0 {
                    let n = quota
                        .unsigned_abs()
                        .div_ceil(period)
                        .clamp(1, u64::from(MAX_VCPUS));
                    vcpus = u8::try_from(n).unwrap_or(MAX_VCPUS);
                }
            }
        }
        if let Some(limit) = resources
            .as_ref()
            .and_then(|r| r.memory().as_ref().and_then(|m| m.limit()))
        {
            if limit > 0 {
                let mib = u32::try_from(limit.unsigned_abs().div_ceil(1 << 20)).unwrap_or(u32::MAX);
                mem = mib.saturating_add(MEMORY_OVERHEAD_MIB).min(MAX_MEMORY_MIB);
            }
        }
        if let Some(v) = annotations.get(ANNOTATION_VCPUS) {
            vcpus = v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_VCPUS).contains(n))
                .ok_or_else(|| {
                    SpecError::Invalid(
                        format!("annotation {ANNOTATION_VCPUS}"),
                        format!("{v:?} is not a vCPU count from 1 to {MAX_VCPUS}"),
                    )
                })?;
        }
        if let Some(v) = annotations.get(ANNOTATION_MEMORY_MIB) {
            mem = v
                .parse()
                .ok()
                .filter(|n| (64..=MAX_MEMORY_MIB).contains(n))
                .ok_or_else(|| {
                    SpecError::Invalid(
                        format!("annotation {ANNOTATION_MEMORY_MIB}"),
                        format!("{v:?} is not a size from 64 to {MAX_MEMORY_MIB} MiB"),
                    )
                })?;
        }
        Ok((vcpus, mem))
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> (PathBuf, Result<Bundle, SpecError>) {
        let dir =
            std::env::temp_dir().join(format!("runm-spec-{}-{}", std::process::id(), config.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        std::fs::write(dir.join("config.json"), config).unwrap();
        let b = Bundle::load(&dir);
        (dir, b)
    }

    fn default_config() -> serde_json::Value {
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
    fn vm_size_from_resources_and_annotations() {
        let mut c = default_config();
        c["linux"]["resources"] = serde_json::json!({
            "memory": {"limit": 256 * 1024 * 1024},
            "cpu": {"quota": 150000, "period": 100000}
        });
        let (dir, b) = bundle_with(&c.to_string());
        assert_eq!(
            b.unwrap().vm_size().unwrap(),
            (2, 256 + MEMORY_OVERHEAD_MIB)
        );
        std::fs::remove_dir_all(dir).unwrap();
        let mut c = default_config();
        c["annotations"] =
            serde_json::json!({ANNOTATION_VCPUS: "4", ANNOTATION_MEMORY_MIB: "1024"});
        let (dir, b) = bundle_with(&c.to_string());
        assert_eq!(b.unwrap().vm_size().unwrap(), (4, 1024));
        std::fs::remove_dir_all(dir).unwrap();
        let mut c = default_config();
        c["annotations"] = serde_json::json!({ANNOTATION_VCPUS: "0"});
        let (dir, b) = bundle_with(&c.to_string());
        let e = b.unwrap().vm_size().unwrap_err().to_string();
        assert!(e.contains(ANNOTATION_VCPUS), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
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
