//! Which of the host's files a container sees, and how they reach the guest: the
//! rootfs and every bind mount's source are shared over virtio-fs (see `virtiofs.rs`),
//! or the rootfs is a disk image or block device attached with virtio-blk. Everything
//! is checked here, before anything is created, so that bad input names its field.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Mount;

use crate::spec::Bundle;

/// A disk image or block device to use as the rootfs instead of `root.path`.
pub const ANNOTATION_ROOTFS_BLOCK: &str = "io.runm.rootfs.block";
/// The filesystem on that disk; the guest detects it when this is not given.
pub const ANNOTATION_ROOTFS_FSTYPE: &str = "io.runm.rootfs.fstype";

/// Mount types the guest kernel provides itself; their `source` is not a host path.
const GUEST_TYPES: &[&str] = &[
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

#[derive(Debug, thiserror::Error)]
pub enum MountsError {
    #[error("config.json: field `{field}`: {message}")]
    Field { field: String, message: String },
    #[error("annotation {name}: {message}")]
    Annotation { name: &'static str, message: String },
}

fn field(field: String, message: impl Into<String>) -> MountsError {
    MountsError::Field {
        field,
        message: message.into(),
    }
}

/// What a shared host path is; the mount point made for it in the shared directory
/// must be the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    Dir,
    File,
}

/// One host path bind-mounted into the sandbox's shared directory as `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub name: String,
    pub source: PathBuf,
    pub kind: ShareKind,
    pub readonly: bool,
    /// `rbind`: submounts of the source come too.
    pub recursive: bool,
}

/// Where the rootfs comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// The share named `name` (the bundle's `root.path`). Shared writable even when
    /// `root.readonly`: see `runm_protocol::Rootfs::Shared`.
    Shared { name: String },
    Block {
        path: PathBuf,
        fstype: Option<String>,
        readonly: bool,
    },
}

/// The container's filesystems, as the host and the guest must set them up.
#[derive(Debug, Clone)]
pub struct Plan {
    pub root: RootSource,
    pub shares: Vec<Share>,
    /// `config.json`'s mounts with bind sources rewritten to their guest paths.
    pub guest_mounts: Vec<Mount>,
}

/// The share name of the rootfs, and of bind mount `i`.
pub const ROOTFS_SHARE: &str = "rootfs";
fn mount_share(i: usize) -> String {
    format!("m{i}")
}

/// Plans the bundle's filesystems; `guest_dir` is where the guest mounts the shared
/// directory.
pub fn plan(bundle: &Bundle, guest_dir: &Path) -> Result<Plan, MountsError> {
    let readonly = bundle.readonly_root();
    let annotations = bundle.annotations();
    let mut shares = Vec::new();
    let root = match annotations.get(ANNOTATION_ROOTFS_BLOCK) {
        Some(path) => block_root(
            bundle,
            path,
            annotations.get(ANNOTATION_ROOTFS_FSTYPE),
            readonly,
        )?,
        None => {
            let source = bundle
                .rootfs()
                .map_err(|e| field("root.path".into(), e.to_string()))?;
            if !source.is_dir() {
                return Err(field(
                    "root.path".into(),
                    format!("{} is not a directory", source.display()),
                ));
            }
            shares.push(Share {
                name: ROOTFS_SHARE.into(),
                source,
                kind: ShareKind::Dir,
                readonly: false,
                recursive: true,
            });
            RootSource::Shared {
                name: ROOTFS_SHARE.into(),
            }
        }
    };
    let mut guest_mounts = Vec::new();
    for (i, m) in bundle.spec.mounts().iter().flatten().enumerate() {
        let mut m = m.clone();
        if let Some(share) = bind_share(bundle, i, &m)? {
            m.set_source(Some(guest_dir.join(&share.name)));
            m.set_typ(Some("bind".into()));
            shares.push(share);
        }
        guest_mounts.push(m);
    }
    Ok(Plan {
        root,
        shares,
        guest_mounts,
    })
}

fn block_root(
    bundle: &Bundle,
    path: &str,
    fstype: Option<&String>,
    readonly: bool,
) -> Result<RootSource, MountsError> {
    let bad = |message: String| MountsError::Annotation {
        name: ANNOTATION_ROOTFS_BLOCK,
        message,
    };
    let full = bundle.dir.join(path);
    let meta = std::fs::metadata(&full).map_err(|e| bad(format!("{}: {e}", full.display())))?;
    if !(meta.is_file() || meta.file_type().is_block_device()) {
        return Err(bad(format!(
            "{} is neither a disk image file nor a block device",
            full.display()
        )));
    }
    if let Some(fs) = fstype {
        if !runm_protocol::is_fstype_name(fs) {
            return Err(MountsError::Annotation {
                name: ANNOTATION_ROOTFS_FSTYPE,
                message: format!("{fs:?} is not a filesystem type name"),
            });
        }
    }
    Ok(RootSource::Block {
        path: full,
        fstype: fstype.cloned(),
        readonly,
    })
}

/// The share for mount `i` if it is a bind mount (whose source is a host path); checks
/// that any other mount is of a type the guest provides.
fn bind_share(bundle: &Bundle, i: usize, m: &Mount) -> Result<Option<Share>, MountsError> {
    let options = m.options().clone().unwrap_or_default();
    let typ = m.typ().as_deref().unwrap_or("");
    let has = |o: &str| options.iter().any(|x| x == o);
    let bind = typ == "bind" || has("bind") || has("rbind");
    if !bind {
        if GUEST_TYPES.contains(&typ) {
            return Ok(None);
        }
        return Err(field(
            format!("mounts[{i}].type"),
            format!(
                "{typ:?} (at {}) is not supported: expected bind or one of {}",
                m.destination().display(),
                GUEST_TYPES.join(", ")
            ),
        ));
    }
    let source = m.source().as_ref().ok_or_else(|| {
        field(
            format!("mounts[{i}].source"),
            "missing; a bind mount needs one",
        )
    })?;
    let source = bundle.dir.join(source);
    let meta = std::fs::metadata(&source).map_err(|e| {
        field(
            format!("mounts[{i}].source"),
            format!("{}: {e}", source.display()),
        )
    })?;
    let kind = if meta.is_dir() {
        ShareKind::Dir
    } else if meta.is_file() {
        ShareKind::File
    } else {
        return Err(field(
            format!("mounts[{i}].source"),
            format!(
                "{} is a {}: only files and directories can be shared into the VM",
                source.display(),
                describe(meta.file_type())
            ),
        ));
    };
    Ok(Some(Share {
        name: mount_share(i),
        source,
        kind,
        readonly: has("ro"),
        recursive: has("rbind"),
    }))
}

fn describe(t: std::fs::FileType) -> &'static str {
    if t.is_socket() {
        "socket"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(test)]
#[path = "mounts_tests.rs"]
mod tests;
