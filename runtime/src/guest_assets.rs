//! Finds the guest kernel and initramfs, and the virtio-fs server: a flag, setting or
//! environment variable wins, else the files installed beside the `runm` binary (`make`
//! puts them in `target/guest/`, `make install` in `<prefix>/lib/runm/`; virtiofsd also
//! where distributions put it, or on `PATH`).

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("{} {}: no such file", .asset.what(), .path.display())]
    NoSuchFile { asset: Asset, path: PathBuf },
    #[error(
        "no {} found (looked in {}); run `make`, or pass its path",
        .asset.what(),
        path_list(.searched)
    )]
    NotFound {
        asset: Asset,
        searched: Vec<PathBuf>,
    },
    #[error("cannot find the runm executable's path: {0}")]
    CurrentExe(std::io::Error),
}

/// `paths` as a comma-separated list.
pub fn path_list(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

#[derive(Debug, Clone, Copy)]
pub enum Asset {
    Kernel,
    Initramfs,
    Virtiofsd,
}

impl Asset {
    fn file_name(self) -> &'static str {
        match self {
            Asset::Kernel => "vmlinux",
            Asset::Initramfs => "initramfs.cpio",
            Asset::Virtiofsd => "virtiofsd",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Asset::Kernel => "guest kernel",
            Asset::Initramfs => "guest initramfs",
            Asset::Virtiofsd => "virtiofsd (the virtio-fs file server)",
        }
    }
}

/// Places searched, in order, for `asset`, given the executable's path.
fn default_dirs(asset: Asset, exe: &Path) -> Vec<PathBuf> {
    let Some(bin_dir) = exe.parent() else {
        return Vec::new();
    };
    match asset {
        Asset::Kernel | Asset::Initramfs => {
            vec![bin_dir.join("../guest"), bin_dir.join("../lib/runm")]
        }
        Asset::Virtiofsd => {
            let mut dirs = vec![
                bin_dir.to_path_buf(),
                bin_dir.join("../lib/runm"),
                // Not /usr/lib/qemu: Debian 12's virtiofsd there is QEMU's old C one, which
                // takes none of the options runm passes.
                "/usr/libexec".into(),
            ];
            dirs.extend(std::env::split_paths(
                &std::env::var_os("PATH").unwrap_or_default(),
            ));
            dirs
        }
    }
}

/// This binary's path, read once: after the host process takes a new mount namespace,
/// `/proc/self/exe` names it from the old namespace's root, which differs from this
/// process's root under a chroot. [`crate::host`] reads it before.
pub fn own_exe() -> Result<PathBuf, LocateError> {
    static EXE: std::sync::OnceLock<Result<PathBuf, std::io::ErrorKind>> =
        std::sync::OnceLock::new();
    EXE.get_or_init(|| std::env::current_exe().map_err(|e| e.kind()))
        .clone()
        .map_err(|kind| LocateError::CurrentExe(kind.into()))
}

/// Returns `explicit` if given (it must exist), else the first default that exists.
pub fn locate(asset: Asset, explicit: Option<PathBuf>) -> Result<PathBuf, LocateError> {
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(LocateError::NoSuchFile { asset, path });
        }
        return Ok(path);
    }
    let exe = own_exe()?;
    let candidates: Vec<PathBuf> = default_dirs(asset, &exe)
        .into_iter()
        .map(|d| d.join(asset.file_name()))
        .collect();
    match candidates.iter().find(|p| p.is_file()) {
        Some(found) => Ok(found.clone()),
        None => Err(LocateError::NotFound {
            asset,
            searched: candidates,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_beside_the_binary() {
        let dirs = default_dirs(Asset::Kernel, Path::new("/usr/local/bin/runm"));
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/usr/local/bin/../guest"),
                PathBuf::from("/usr/local/bin/../lib/runm")
            ]
        );
    }

    #[test]
    fn virtiofsd_is_looked_for_beside_the_binary_first() {
        let dirs = default_dirs(Asset::Virtiofsd, Path::new("/opt/runm/bin/runm"));
        assert_eq!(dirs[0], PathBuf::from("/opt/runm/bin"));
        assert!(dirs.contains(&PathBuf::from("/usr/libexec")));
    }

    #[test]
    fn explicit_missing_file_is_named() {
        let err = locate(Asset::Kernel, Some("/nope/vmlinux".into())).unwrap_err();
        assert_eq!(err.to_string(), "guest kernel /nope/vmlinux: no such file");
    }
}
