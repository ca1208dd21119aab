//! Volumes: a directory becomes an ext4 image (mke2fs -d) and comes back from it (debugfs
//! rdump + sync) with the image's additions, changes and deletions; changed here with
//! `debugfs -w` as a guest would change it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use images::volume;

fn debugfs_write(image: &Path, requests: &str) {
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg("-")
        .arg(image)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(requests.as_bytes())?;
            child.wait_with_output()
        })
        .expect("run debugfs");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_volume_comes_back_with_the_guests_changes() {
    if Command::new("debugfs").arg("-V").output().is_err() {
        println!("SKIPPED a_volume_comes_back_with_the_guests_changes: debugfs is not installed (e2fsprogs)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("vol");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("keep"), "kept\n").unwrap();
    fs::write(dir.join("change"), "before\n").unwrap();
    fs::write(dir.join("sub/del"), "gone\n").unwrap();
    std::os::unix::fs::symlink("keep", dir.join("link")).unwrap();
    let image = tmp.path().join("vol.ext4");
    volume::create(&dir, &image).unwrap();

    let new_file = tmp.path().join("new-content");
    fs::write(&new_file, "from the guest\n").unwrap();
    fs::write(tmp.path().join("changed"), "after, longer\n").unwrap();
    debugfs_write(
        &image,
        &format!(
            "rm /sub/del\nrm /change\nwrite {} /change\nmkdir /made\nwrite {} /made/new\nset_inode_field /made/new mode 0100600\n",
            tmp.path().join("changed").display(),
            new_file.display()
        ),
    );
    volume::copy_back(&image, &dir, &volume::work_dir(&image)).unwrap();

    assert_eq!(fs::read_to_string(dir.join("keep")).unwrap(), "kept\n");
    assert_eq!(
        fs::read_to_string(dir.join("change")).unwrap(),
        "after, longer\n"
    );
    assert!(!dir.join("sub/del").exists());
    assert!(dir.join("sub").is_dir());
    assert_eq!(
        fs::read_to_string(dir.join("made/new")).unwrap(),
        "from the guest\n"
    );
    let mode = fs::metadata(dir.join("made/new"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(fs::read_link(dir.join("link")).unwrap(), Path::new("keep"));
    // mke2fs's lost+found stays out of a directory that never had one; the work dir is gone.
    assert!(!dir.join("lost+found").exists());
    assert!(!volume::work_dir(&image).exists());
}

#[test]
fn scratch_sizes_read_as_docker_writes_them() {
    assert_eq!(volume::parse_size("512M").unwrap(), 512 << 20);
    assert_eq!(volume::parse_size("2G").unwrap(), 2 << 30);
    assert_eq!(volume::parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(volume::parse_size("1073741824").unwrap(), 1 << 30);
    for bad in ["", "1X", "10M", "-1G", "99999999999999999999G"] {
        let err = volume::parse_size(bad).unwrap_err().to_string();
        assert!(err.starts_with("scratch size"), "{bad}: {err}");
    }
}
