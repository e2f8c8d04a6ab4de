//! Reading an encryption secret for `keylocation=prompt`: from the terminal
//! without echo (asked twice when it is new), or from standard input when
//! that is not a terminal (`echo ... | edgevol volume load-key ...`).

use std::io::{BufRead, IsTerminal, Read, Write};

use anyhow::{bail, Context, Result};

/// The secret for a key of `format` (`passphrase`, `raw` or `hex`).
/// `confirm`: ask twice on a terminal (a new key).
pub fn read_secret(what: &str, format: &str, confirm: bool) -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut v = Vec::new();
        if format == "raw" {
            stdin
                .lock()
                .read_to_end(&mut v)
                .context("reading the key from stdin")?;
        } else {
            stdin
                .lock()
                .read_until(b'\n', &mut v)
                .context("reading the key from stdin")?;
            while v.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                v.pop();
            }
        }
        if v.is_empty() {
            bail!("no key on standard input");
        }
        return Ok(v);
    }
    if format == "raw" {
        bail!("a raw key cannot be typed: pipe it on standard input or use keylocation=file://");
    }
    let first = prompt(&format!("Enter {format} for {what}: "))?;
    if confirm && prompt(&format!("Re-enter {format} for {what}: "))? != first {
        bail!("the entries do not match");
    }
    Ok(first)
}

/// Ask on the terminal with echo off.
fn prompt(text: &str) -> Result<Vec<u8>> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("opening the terminal")?;
    tty.write_all(text.as_bytes())?;
    tty.flush()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&tty);
    let old = set_echo(fd, false);
    let mut line = Vec::new();
    let r = std::io::BufReader::new(&mut tty).read_until(b'\n', &mut line);
    if let Some(old) = old {
        restore(fd, &old);
    }
    let _ = tty.write_all(b"\n");
    r.context("reading from the terminal")?;
    while line.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
        line.pop();
    }
    Ok(line)
}

fn set_echo(fd: i32, on: bool) -> Option<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it for a valid fd and
    // we only use it when that succeeded.
    // JUSTIFICATION: std has no API to turn terminal echo off.
    #[allow(unsafe_code)]
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return None;
        }
        let old = t;
        if on {
            t.c_lflag |= libc::ECHO;
        } else {
            t.c_lflag &= !libc::ECHO;
        }
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        Some(old)
    }
}

fn restore(fd: i32, old: &libc::termios) {
    // SAFETY: `old` came from tcgetattr on the same fd.
    // JUSTIFICATION: as in set_echo.
    #[allow(unsafe_code)]
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, old);
    }
}
