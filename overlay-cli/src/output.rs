//! How answers look on a terminal: aligned text tables, shortened ids, sizes and durations,
//! one-line JSON, and a progress line on stderr for long waits.
//!
//! Everything that renders takes a `&mut impl Write` and returns `io::Result`, so a closed
//! pipe (`overlay ring | head -1`) is an error the caller can treat as success instead of a
//! panic from `println!`.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

/// A text table with a header row; columns are left-aligned and padded to their widest cell.
#[derive(Debug, Default)]
pub(crate) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table { header: header.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    pub(crate) fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub(crate) fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).chain([self.header.len()]).max().unwrap_or(0);
        let mut widths = vec![0; columns];
        for row in std::iter::once(&self.header).chain(&self.rows) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    let padding = widths[column] - cell.chars().count();
                    line.push_str(cell);
                    line.push_str(&" ".repeat(padding + 2));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// The first 10 hex digits of a ring id: ids sort by their prefix, so the short form still
/// shows ring order, and 40 bits keep distinct nodes distinct in any cluster a human reads.
pub(crate) fn short_ring_id(ring_id: &str) -> String {
    ring_id.chars().take(10).collect()
}

/// The last 8 characters of a peer id. Ed25519 peer ids all start `12D3KooW`, so the prefix
/// would make every node look the same.
pub(crate) fn short_peer_id(peer_id: &str) -> String {
    let count = peer_id.chars().count();
    if count <= 10 {
        return peer_id.to_owned();
    }
    let tail: String = peer_id.chars().skip(count - 8).collect();
    format!("…{tail}")
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.0 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Display only: the precision lost converting to f64 is far below the one digit shown.
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration for humans: `42.0 s`, `3m 05s`, `2h 01m`, `1d 03h`.
pub(crate) fn human_duration(seconds: f64) -> String {
    if !seconds.is_finite() || seconds < 0.0 {
        return "unknown".to_owned();
    }
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    // Truncation to whole seconds is the intent; the value is finite and non-negative.
    let whole = seconds as u64;
    let (days, hours, minutes, secs) = (whole / 86_400, whole / 3600 % 24, whole / 60 % 60, whole % 60);
    if days > 0 {
        format!("{days}d {hours:02}h")
    } else if hours > 0 {
        format!("{hours}h {minutes:02}m")
    } else {
        format!("{minutes}m {secs:02}s")
    }
}

/// Writes `value` as one line of compact JSON: one document per line is what `jq` and
/// line-oriented tools handle best.
pub(crate) fn write_json(out: &mut impl Write, value: &serde_json::Value) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    writeln!(out)
}

/// A status line on stderr for waits that take seconds. On a terminal it is redrawn in place
/// with the elapsed time; otherwise (logs, CI) a line is printed only when the state changes,
/// so a one-minute wait does not print six hundred lines.
#[derive(Debug)]
pub(crate) struct Progress {
    on_terminal: bool,
    last_state: String,
    drawn: bool,
}

impl Progress {
    pub(crate) fn new() -> Self {
        Progress { on_terminal: io::stderr().is_terminal(), last_state: String::new(), drawn: false }
    }

    pub(crate) fn update(&mut self, state: &str, elapsed: Duration) {
        let mut stderr = io::stderr().lock();
        // Progress is decoration: failing to draw it must not fail the command.
        if self.on_terminal {
            let _ = write!(stderr, "\r\x1b[2K{state} ({:.1} s)", elapsed.as_secs_f64());
            let _ = stderr.flush();
            self.drawn = true;
        } else if state != self.last_state {
            let _ = writeln!(stderr, "{state}");
        }
        self.last_state = state.to_owned();
    }

    /// Ends the redrawn line so the next output starts on a fresh one.
    pub(crate) fn finish(&mut self) {
        if self.on_terminal && self.drawn {
            let _ = writeln!(io::stderr().lock());
            self.drawn = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(table: &Table) -> String {
        let mut out = Vec::new();
        table.write(&mut out).expect("writing to a Vec cannot fail");
        String::from_utf8(out).expect("tables are UTF-8")
    }

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let mut table = Table::new(["#", "name", "addr"]);
        table.row(["0", "a", "/ip4/1"]);
        table.row(["10", "longer", ""]);
        assert_eq!(render(&table), "#   name    addr\n0   a       /ip4/1\n10  longer\n");
    }

    #[test]
    fn ids_are_shortened_keeping_what_tells_them_apart() {
        assert_eq!(short_ring_id("0123456789abcdef0123456789abcdef01234567"), "0123456789");
        assert_eq!(short_peer_id("12D3KooWAbCdEfGhIjKlMnOp"), "…IjKlMnOp");
        assert_eq!(short_peer_id("short"), "short");
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_duration(4.25), "4.2 s");
        assert_eq!(human_duration(185.0), "3m 05s");
        assert_eq!(human_duration(7260.0), "2h 01m");
        assert_eq!(human_duration(97_200.0), "1d 03h");
        assert_eq!(human_duration(f64::NAN), "unknown");
    }
}
