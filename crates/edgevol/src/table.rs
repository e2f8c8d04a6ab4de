//! Plain aligned tables for humans.

/// A table with a header row.
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// Columns named `header`; names starting with `>` are right-aligned.
    pub fn new(header: &[&str]) -> Table {
        Table {
            right: header.iter().map(|h| h.starts_with('>')).collect(),
            rows: vec![header
                .iter()
                .map(|h| h.trim_start_matches('>').to_string())
                .collect()],
        }
    }

    /// Add a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Print to stdout.
    pub fn print(&self) {
        print!("{}", self.render(false));
    }

    /// The table as lines of text; with `rule`, a line of dashes under the
    /// header.
    pub fn render(&self, rule: bool) -> String {
        let n = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..n)
            .map(|i| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for (ri, r) in self.rows.iter().enumerate() {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = r.get(i).map(String::as_str).unwrap_or("");
                let pad = w.saturating_sub(c.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right.get(i).copied().unwrap_or(false) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if ri == 0 && rule {
                let total = widths.iter().sum::<usize>() + 2 * n.saturating_sub(1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        out
    }
}
