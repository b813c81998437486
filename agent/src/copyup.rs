//! `tmpcopyup`, runc's tmpfs mount option (podman sets it on `--read-only` containers'
//! `/tmp`, `/run` and `/var/tmp`): the new tmpfs starts with a copy of what the image has
//! at its mount point. libcontainer does not know the option (it would pass it to the
//! kernel, which refuses it), so the agent does the copy-up before handing over the spec:
//! it fills a tmpfs of its own with the image's directory and turns the mount into a bind
//! of that tmpfs, with the mount's flags.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{mknod, Mode, SFlag};
use serde_json::Value;

/// Where the copied-up tmpfs of a container's mount `i` lives: `<bundle>/copyup/<i>`.
const STAGE_DIR: &str = "copyup";

/// Symlinks followed while resolving one mount point, as the kernel's limit.
const MAX_SYMLINKS: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum CopyUpError {
    #[error("mounts[{index}]: cannot mount the tmpfs for tmpcopyup at {stage}: {errno}")]
    Mount {
        index: usize,
        stage: String,
        errno: String,
    },
    #[error("mounts[{index}]: cannot copy {path} into its tmpfs: {source}")]
    Copy {
        index: usize,
        path: String,
        source: std::io::Error,
    },
}

/// Options that are mount flags (they go on the bind); everything else is tmpfs data
/// (`size=`, `mode=`, ...) and goes to the tmpfs itself.
pub(crate) const FLAG_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "nosuid",
    "suid",
    "nodev",
    "dev",
    "noexec",
    "exec",
    "sync",
    "async",
    "noatime",
    "atime",
    "nodiratime",
    "diratime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "unbindable",
    "runbindable",
];

/// Does the copy-up of every tmpfs mount with `tmpcopyup` in `config`, whose rootfs is
/// mounted at `rootfs`; the staging tmpfs go under `bundle`. A mount point that is
/// missing or empty in the image needs no copy: the option is just dropped.
pub fn prepare(config: &mut Value, rootfs: &Path, bundle: &Path) -> Result<(), CopyUpError> {
    let Some(mounts) = config.get_mut("mounts").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (index, m) in mounts.iter_mut().enumerate() {
        if m.get("type").and_then(Value::as_str) != Some("tmpfs") {
            continue;
        }
        let options: Vec<String> = m
            .get("options")
            .and_then(Value::as_array)
            .map(|o| {
                o.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if !options.iter().any(|o| o == "tmpcopyup") {
            continue;
        }
        let rest: Vec<String> = options.into_iter().filter(|o| o != "tmpcopyup").collect();
        m["options"] = serde_json::json!(rest);
        let dest = m.get("destination").and_then(Value::as_str).unwrap_or("");
        let Some(source) = resolve_in(rootfs, dest).filter(|p| has_entries(p)) else {
            continue;
        };
        let stage = bundle.join(STAGE_DIR).join(index.to_string());
        let (flags, data) = split_options(&rest);
        mount_stage(index, &stage, &data, &source)?;
        copy_tree(&source, &stage).map_err(|(path, source)| CopyUpError::Copy {
            index,
            path: path.display().to_string(),
            source,
        })?;
        let mut bind = vec!["rbind".to_string()];
        bind.extend(flags);
        m["type"] = "bind".into();
        m["source"] = stage.display().to_string().into();
        m["options"] = serde_json::json!(bind);
    }
    Ok(())
}

/// Unmounts the staging tmpfs of a container's bundle (its creation failed, or it ended).
pub fn cleanup(bundle: &Path) {
    let Ok(entries) = std::fs::read_dir(bundle.join(STAGE_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = umount2(&entry.path(), MntFlags::MNT_DETACH);
    }
}

/// A tmpfs at `stage` with the mount's data options, the mode of the image's directory
/// unless `mode=` says otherwise.
fn mount_stage(
    index: usize,
    stage: &Path,
    data: &[String],
    source: &Path,
) -> Result<(), CopyUpError> {
    let err = |errno: String| CopyUpError::Mount {
        index,
        stage: stage.display().to_string(),
        errno,
    };
    std::fs::create_dir_all(stage).map_err(|e| err(e.to_string()))?;
    let mut data = data.to_vec();
    if !data.iter().any(|d| d.starts_with("mode=")) {
        if let Ok(meta) = std::fs::metadata(source) {
            data.push(format!("mode={:o}", meta.mode() & 0o7777));
        }
    }
    mount(
        Some("tmpfs"),
        stage,
        Some("tmpfs"),
        MsFlags::empty(),
        Some(data.join(",").as_str()),
    )
    .map_err(|e| err(e.desc().to_string()))
}

/// Splits mount options into mount flags and filesystem data.
fn split_options(options: &[String]) -> (Vec<String>, Vec<String>) {
    options
        .iter()
        .cloned()
        .partition(|o| FLAG_OPTIONS.contains(&o.as_str()))
}

/// `dest` inside `root`, following symlinks as if `root` were `/` (so none leads out of
/// it); None when it does not exist or loops.
fn resolve_in(root: &Path, dest: &str) -> Option<PathBuf> {
    let mut pending: Vec<PathBuf> = vec![PathBuf::from(dest)];
    let mut at = PathBuf::new(); // relative to root
    let mut hops = 0;
    while let Some(path) = pending.pop() {
        let mut parts: Vec<Component> = path.components().collect();
        parts.reverse();
        while let Some(part) = parts.pop() {
            match part {
                Component::RootDir => at = PathBuf::new(),
                Component::CurDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    at.pop();
                }
                Component::Normal(name) => {
                    let next = at.join(name);
                    let meta = std::fs::symlink_metadata(root.join(&next)).ok()?;
                    if meta.file_type().is_symlink() {
                        hops += 1;
                        if hops > MAX_SYMLINKS {
                            return None;
                        }
                        let target = std::fs::read_link(root.join(&next)).ok()?;
                        // The rest of this path comes after the link's target.
                        let rest: PathBuf = parts.iter().rev().collect();
                        pending.push(rest);
                        pending.push(target);
                        parts.clear();
                    } else {
                        at = next;
                    }
                }
            }
        }
    }
    Some(root.join(at))
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

/// Copies the contents of `from` into the existing directory `to`: directories, files,
/// symlinks and special files, with their modes and owners. Fails with the path that
/// could not be copied.
fn copy_tree(from: &Path, to: &Path) -> Result<(), (PathBuf, std::io::Error)> {
    let entries = std::fs::read_dir(from).map_err(|e| (from.to_path_buf(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (from.to_path_buf(), e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        copy_entry(&src, &dst).map_err(|e| (src.clone(), e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            copy_tree(&src, &dst)?;
        }
    }
    Ok(())
}

fn copy_entry(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(src)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else if kind.is_dir() {
        std::fs::create_dir(dst)?;
    } else if kind.is_file() {
        std::fs::copy(src, dst)?;
    } else {
        let sflag = SFlag::from_bits_truncate(meta.mode() & SFlag::S_IFMT.bits());
        mknod(
            dst,
            sflag,
            Mode::from_bits_truncate(meta.mode()),
            meta.rdev(),
        )?;
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if !kind.is_symlink() {
        // After chown, which clears set-id bits.
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("runm-copyup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let opts: Vec<String> = ["rw", "size=64k", "nosuid", "mode=1777", "rprivate"]
            .map(String::from)
            .into();
        let (flags, data) = split_options(&opts);
        assert_eq!(flags, ["rw", "nosuid", "rprivate"]);
        assert_eq!(data, ["size=64k", "mode=1777"]);
    }

    #[test]
    fn mount_points_resolve_inside_the_rootfs() {
        let root = tmp("resolve");
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        std::os::unix::fs::symlink("/var/lib", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("var/up")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert_eq!(resolve_in(&root, "/var/lib"), Some(root.join("var/lib")));
        // An absolute link is taken from the rootfs, not from the guest's `/`.
        assert_eq!(resolve_in(&root, "/abs"), Some(root.join("var/lib")));
        // `..` stops at the rootfs.
        assert_eq!(resolve_in(&root, "/var/up/var"), Some(root.join("var")));
        assert_eq!(resolve_in(&root, "/loop"), None);
        assert_eq!(resolve_in(&root, "/missing"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_tree_is_copied_with_modes_and_links() {
        let dir = tmp("copy");
        let (from, to) = (dir.join("from"), dir.join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("sub/file"), "content").unwrap();
        std::fs::set_permissions(from.join("sub"), PermissionsExt::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink("sub/file", from.join("link")).unwrap();
        copy_tree(&from, &to).unwrap();
        assert_eq!(
            std::fs::read_to_string(to.join("sub/file")).unwrap(),
            "content"
        );
        assert_eq!(
            std::fs::read_link(to.join("link")).unwrap(),
            Path::new("sub/file")
        );
        let mode = std::fs::metadata(to.join("sub")).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o1777);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mounts_without_the_option_or_without_content_are_left_as_they_are() {
        let dir = tmp("prepare");
        std::fs::create_dir_all(dir.join("rootfs/empty")).unwrap();
        let mut config = serde_json::json!({"mounts": [
            {"destination": "/empty", "type": "tmpfs", "source": "tmpfs",
             "options": ["rw", "tmpcopyup", "size=1m"]},
            {"destination": "/missing", "type": "tmpfs", "source": "tmpfs",
             "options": ["tmpcopyup"]},
            {"destination": "/proc", "type": "proc", "source": "proc"},
        ]});
        prepare(&mut config, &dir.join("rootfs"), &dir).unwrap();
        assert_eq!(config["mounts"][0]["type"], "tmpfs");
        assert_eq!(
            config["mounts"][0]["options"],
            serde_json::json!(["rw", "size=1m"])
        );
        assert_eq!(config["mounts"][1]["options"], serde_json::json!([]));
        assert_eq!(config["mounts"][2]["type"], "proc");
        assert!(!dir.join(STAGE_DIR).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
