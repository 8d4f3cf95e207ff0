//! `zoftoken completions SHELL` and `zoftoken man DIR`: shell completions and manual pages
//! generated from the command-line definitions (`clap_complete`, `clap_mangen`), so they
//! always list the commands and options this binary has.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Command;

/// Writes the completion script of `shell` for `command` to standard output.
pub fn completions(shell: clap_complete::Shell, mut command: Command) -> ExitCode {
    let name = command.get_name().to_owned();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    clap_complete::generate(shell, &mut command, name, &mut out);
    match out.flush() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zoftoken: cannot write the completions: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes one manual page (section 1) per command into `dir`: `zoftoken.1`, then
/// `zoftoken-<command>.1`, `zoftoken-<command>-<subcommand>.1`, … (created if missing).
/// Manual pages are for every user of the machine: unlike everything else this binary
/// writes, they are created with mode 0644 (directories 0755).
pub fn man_pages(command: Command, dir: &Path) -> anyhow::Result<ExitCode> {
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut command = command.disable_help_subcommand(true);
    // Gives every subcommand its full name (`zoftoken-device-open`), the page's name.
    command.build();
    let mut written = Vec::new();
    write_pages(&command, dir, &mut written)?;
    for page in &written {
        println!("{}", page.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn write_pages(
    command: &Command,
    dir: &Path,
    written: &mut Vec<std::path::PathBuf>,
) -> anyhow::Result<()> {
    let man = clap_mangen::Man::new(command.clone());
    let path = dir.join(man.get_filename());
    let mut page = Vec::new();
    man.render(&mut page)?;
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        // A page written before under another umask is made readable too.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("{}", path.display()))?;
    }
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    Ok(())
}
