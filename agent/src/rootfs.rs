//! The container's root filesystem in the guest: a directory of the sandbox's shared
//! file system (virtio-fs, the default) or a virtio-blk disk, mounted at the bundle's
//! `rootfs` before libcontainer takes over.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path};

use nix::mount::{mount, MsFlags};
use runm_protocol::{Rootfs, SHARED_DIR};

use crate::spec::{self, SpecError};

/// Longest virtio-fs tag (virtio 1.2 §5.11.4).
const MAX_TAG_LEN: usize = 36;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("invalid shared file system tag {0:?}")]
    Tag(String),
    #[error("invalid shared rootfs path {0:?}: expected a relative path without `..`")]
    Path(String),
    #[error("cannot mount {what} at {target}: {errno}")]
    Mount {
        what: String,
        target: String,
        errno: String,
    },
    #[error("cannot mount {device} at {target}: no filesystem type this kernel knows fits it (tried {tried})")]
    Detect {
        device: String,
        target: String,
        tried: String,
    },
}

fn mount_error(what: &str, target: &Path, e: nix::Error) -> RootfsError {
    RootfsError::Mount {
        what: what.to_string(),
        target: target.display().to_string(),
        errno: e.desc().to_string(),
    }
}

/// Mounts the shared file system `tag` at [`SHARED_DIR`], once.
pub fn mount_shared(tag: &str) -> Result<(), RootfsError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(RootfsError::Tag(tag.chars().take(64).collect()));
    }
    let dir = Path::new(SHARED_DIR);
    if is_mount_point(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| RootfsError::Mount {
        what: tag.to_string(),
        target: SHARED_DIR.to_string(),
        errno: e.to_string(),
    })?;
    mount(
        Some(tag),
        dir,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| mount_error(&format!("virtio-fs {tag}"), dir, e))
}

/// Mounts `rootfs` at `target` (an existing directory).
pub fn mount_rootfs(rootfs: &Rootfs, target: &Path) -> Result<(), RootfsError> {
    match rootfs {
        Rootfs::Shared { path } => {
            let rel = Path::new(path);
            let plain =
                !path.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain {
                return Err(RootfsError::Path(path.chars().take(256).collect()));
            }
            let source = Path::new(SHARED_DIR).join(rel);
            let what = source.display().to_string();
            mount(
                Some(&source),
                target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| mount_error(&what, target, e))
        }
        Rootfs::Block {
            device,
            fstype,
            readonly,
        } => {
            spec::validate_rootfs(device, fstype.as_deref())?;
            let flags = if *readonly {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
            let try_mount =
                |fs: &str| mount(Some(device.as_str()), target, Some(fs), flags, None::<&str>);
            match fstype {
                Some(fs) => {
                    try_mount(fs).map_err(|e| mount_error(&format!("{device} ({fs})"), target, e))
                }
                None => {
                    let candidates = block_filesystems();
                    for fs in &candidates {
                        if try_mount(fs).is_ok() {
                            crate::debug::log(|| format!("{device} mounted as {fs}"));
                            return Ok(());
                        }
                    }
                    Err(RootfsError::Detect {
                        device: device.clone(),
                        target: target.display().to_string(),
                        tried: candidates.join(", "),
                    })
                }
            }
        }
    }
}

/// The filesystem types this kernel can mount from a block device (`/proc/filesystems`
/// entries not marked `nodev`), as `mount -t auto` tries them.
fn block_filesystems() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    parse_block_filesystems(&text)
}

fn parse_block_filesystems(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("nodev"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

/// Makes the process's working directory in the rootfs when it is missing, as runc does
/// (mkdir -p, 0755). Only plain directories of the rootfs itself are walked: a cwd under
/// a mount, with `..`, or through a symlink is left to libcontainer, which reports it.
pub fn make_cwd(config: &serde_json::Value, rootfs: &Path) {
    let Some(cwd) = config["process"]["cwd"].as_str().map(Path::new) else {
        return;
    };
    let under_mount = config["mounts"].as_array().into_iter().flatten().any(|m| {
        m["destination"]
            .as_str()
            .is_some_and(|d| d != "/" && cwd.starts_with(d))
    });
    let climbs = cwd.components().any(|c| c == Component::ParentDir);
    if under_mount || climbs || !cwd.is_absolute() {
        return;
    }
    let mut dir = rootfs.to_path_buf();
    for part in cwd.components() {
        match part {
            Component::RootDir => continue,
            Component::Normal(name) => dir.push(name),
            _ => return,
        }
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => continue,
            Ok(_) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let made = std::fs::DirBuilder::new().mode(0o755).create(&dir);
                if let Err(e) = made {
                    tracing::debug!("cannot make the cwd's {}: {e}", dir.display());
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

fn is_mount_point(dir: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy();
    text.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cwd_is_made_in_the_rootfs_only() {
        let root = std::env::temp_dir().join(format!("runm-cwd-{}", std::process::id()));
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::os::unix::fs::symlink("/", root.join("link")).unwrap();
        let config = |cwd: &str| {
            serde_json::json!({"process": {"cwd": cwd},
                "mounts": [{"destination": "/data", "type": "tmpfs"}]})
        };
        make_cwd(&config("/a/b"), &root);
        assert!(root.join("a/b").is_dir());
        make_cwd(&config("/data/x"), &root);
        assert!(!root.join("data/x").exists());
        make_cwd(&config("/link/runm-cwd-test"), &root);
        assert!(!Path::new("/runm-cwd-test").exists());
        make_cwd(&config("/c/../d"), &root);
        assert!(!root.join("d").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn block_filesystems_skip_nodev_entries() {
        let text = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\tvirtiofs\n\tsquashfs\n";
        assert_eq!(parse_block_filesystems(text), ["ext4", "squashfs"]);
    }

    #[test]
    fn shared_paths_must_stay_inside_the_shared_dir() {
        let target = Path::new("/nonexistent-target");
        for bad in ["", "../x", "/etc", "rootfs/../../x", "."] {
            let r = mount_rootfs(&Rootfs::Shared { path: bad.into() }, target);
            assert!(matches!(r, Err(RootfsError::Path(_))), "{bad:?}: {r:?}");
        }
    }

    #[test]
    fn tags_are_checked_before_mounting() {
        for bad in ["", "a b", "../x", &"t".repeat(37)] {
            assert!(
                matches!(mount_shared(bad), Err(RootfsError::Tag(_))),
                "{bad:?}"
            );
        }
    }
}
