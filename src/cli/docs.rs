//! `hsmca generate-docs DIR` (hidden): the man pages and the shell
//! completions, generated from the same clap definitions that print
//! `--help`, so they cannot drift from it. `scripts/package.sh` runs it and
//! puts the result in the Debian package.

use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, CliResult};

/// The completion files, by the names their shells look for
/// (bash-completion, zsh's `_command` convention, fish).
pub const COMPLETIONS: [(Shell, &str); 3] = [
    (Shell::Bash, "hsmca"),
    (Shell::Zsh, "_hsmca"),
    (Shell::Fish, "hsmca.fish"),
];

/// Writes `DIR/man/hsmca.1` plus one page per subcommand
/// (`hsmca-config-check.1`, …; hidden commands have none), and
/// `DIR/completions/` for bash, zsh and fish.
pub fn generate(dir: &Path) -> CliResult {
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .map_err(|e| format!("cannot write the man pages into {}: {e}", man.display()))?;
    for (shell, name) in COMPLETIONS {
        let path = completions.join(name);
        let mut file = std::fs::File::create(&path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        clap_complete::generate(shell, &mut public_command(), "hsmca", &mut file);
    }
    Ok(())
}

/// The command without its hidden subcommands (`bench-raw`,
/// `generate-docs`), which clap_complete would otherwise offer: the root's
/// own settings, then every visible subcommand as it is defined.
fn public_command() -> clap::Command {
    let full = Cli::command();
    let mut public = clap::Command::new("hsmca")
        .version(super::VERSION)
        .subcommand_required(full.is_subcommand_required_set())
        .arg_required_else_help(full.is_arg_required_else_help_set());
    if let Some(about) = full.get_about() {
        public = public.about(about.clone());
    }
    public.subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_for_every_visible_command_and_a_completion_per_shell() {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path()).unwrap();
        let page = |name: &str| std::fs::read_to_string(dir.path().join("man").join(name));
        let top = page("hsmca.1").unwrap();
        assert!(top.starts_with(".ie \\n(.g .ds Aq") || top.contains(".TH hsmca 1"));
        assert!(top.contains(super::super::VERSION), "{top}");
        let check = page("hsmca-config-check.1").unwrap();
        assert!(check.contains("\\-\\-json"), "{check}");
        assert!(page("hsmca-generate-docs.1").is_err());
        assert!(page("hsmca-bench-raw.1").is_err());
        let bash = std::fs::read_to_string(dir.path().join("completions/hsmca")).unwrap();
        assert!(bash.contains("complete -F _hsmca"), "{bash}");
        for name in ["hsmca", "_hsmca", "hsmca.fish"] {
            let text = std::fs::read_to_string(dir.path().join("completions").join(name)).unwrap();
            assert!(text.contains("config") && text.contains("setup"), "{name}");
            assert!(
                !text.contains("generate-docs") && !text.contains("bench-raw"),
                "{name}"
            );
        }
        // The public command is the whole command but for the hidden ones.
        let full: Vec<String> = Cli::command()
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name().to_owned())
            .collect();
        let public: Vec<String> = public_command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(public, full);
        assert_eq!(public_command().get_name(), Cli::command().get_name());
        assert_eq!(public_command().get_version(), Cli::command().get_version());
    }
}
