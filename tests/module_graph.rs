//! The module graph's rules (ARCHITECTURE.md) hold, and the check that
//! enforces them (scripts/check-modules.py) fails on a planted cycle, a
//! crossed wall and an over-long file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{path::Path, process::Command};

use common::repo;

fn check(src: &Path) -> (bool, String) {
    let out = Command::new("python3")
        .arg(repo().join("scripts/check-modules.py"))
        .arg(src)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A copy of src/ with `line` appended to `file`.
fn planted(file: &str, line: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&repo().join("src"), dir.path());
    let path = dir.path().join(file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = format!("{line}\n{text}");
    std::fs::write(&path, text).unwrap();
    dir
}

#[test]
fn the_source_has_no_cycles_and_its_walls_hold() {
    let (ok, out) = check(&repo().join("src"));
    println!("{out}");
    assert!(ok, "{out}");
    assert!(out.contains("no cycles, walls hold"), "{out}");
}

#[test]
fn a_planted_cycle_fails_the_check() {
    // time is a foundation every layer uses; importing the CLI closes a loop.
    let dir = planted("time.rs", "use crate::cli::Cli;");
    let (ok, out) = check(dir.path());
    println!("{out}");
    assert!(!ok);
    assert!(out.contains("import cycle among"), "{out}");
    assert!(out.contains("time -> cli (time.rs:1)"), "{out}");
}

#[test]
fn a_crossed_wall_fails_the_check() {
    for (file, line, needle) in [
        (
            "server/mod.rs",
            "use crate::token::TokenError;",
            "wall crossed: server imports token",
        ),
        (
            "issue/mod.rs",
            "use crate::store::Record;",
            "wall crossed: issue imports store",
        ),
        (
            "issue/mod.rs",
            "use crate::proto::GenerateClientCertificateRequest;",
            "wall crossed: issue imports proto",
        ),
        ("token/mod.rs", "use tonic::Status;", "uses tonic"),
    ] {
        let dir = planted(file, line);
        let (ok, out) = check(dir.path());
        assert!(!ok, "{line} in {file} passed:\n{out}");
        assert!(out.contains(needle), "{line} in {file}:\n{out}");
    }
}

#[test]
fn an_overlong_file_fails_the_check() {
    let dir = planted("time.rs", &"// filler\nconst _: () = ();".repeat(700));
    let (ok, out) = check(dir.path());
    assert!(!ok);
    assert!(out.contains("time.rs:"), "{out}");
    assert!(out.contains("lines of non-test code"), "{out}");
}
