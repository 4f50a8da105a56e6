//! Benchmark results as Markdown: one section per benchmark, a table each, and the
//! machine they were taken on. `coredump-bench --write BENCHMARKS.md` replaces the part
//! between the two markers and leaves the prose around it alone.

use std::fmt::Write;
use std::time::Duration;

pub const BEGIN: &str = "<!-- bench:begin (written by make bench) -->";
pub const END: &str = "<!-- bench:end -->";

/// One benchmark's results.
#[derive(Clone, Debug, Default)]
pub struct Section {
    pub title: String,
    /// What was measured and against what, in a sentence or two.
    pub about: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Lines under the table: ratios against goals, caveats.
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(title: &str, about: &str, columns: &[&str]) -> Self {
        Self {
            title: title.to_string(),
            about: about.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            ..Default::default()
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn note(&mut self, n: impl Into<String>) {
        self.notes.push(n.into());
    }

    pub fn markdown(&self) -> String {
        let mut s = format!("### {}\n\n{}\n\n", self.title, self.about);
        let _ = writeln!(s, "| {} |", self.columns.join(" | "));
        let _ = writeln!(s, "|{}", "---|".repeat(self.columns.len()));
        for r in &self.rows {
            let _ = writeln!(s, "| {} |", r.join(" | "));
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }
}

/// Seconds with millisecond precision, e.g. `1.234 s`.
pub fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Milliseconds with one decimal, e.g. `12.3 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// A ratio like `2.31×`.
pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "–".to_string()
    }
}

/// Bytes in MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// What the figures were taken on: kernel, CPUs, memory, and the commit.
pub fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let kernel = read("/proc/sys/kernel/osrelease");
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    format!(
        "{cpus} × {model}, {:.1} GiB RAM, Linux {}, commit {commit}",
        mem_kib as f64 / (1 << 20) as f64,
        kernel.trim()
    )
}

/// The whole generated part: date, machine, command, sections.
pub fn render(sections: &[Section], command: &str, date: &str) -> String {
    let mut s = format!(
        "{BEGIN}\n\nTaken {date} on {} with `{command}`.\n\n",
        machine()
    );
    for sec in sections {
        s.push_str(&sec.markdown());
        s.push('\n');
    }
    s.push_str(END);
    s.push('\n');
    s
}

/// `doc` with the part between the markers replaced by `generated` (appended when the
/// markers are missing).
pub fn splice(doc: &str, generated: &str) -> String {
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &doc[e + END.len()..];
            let after = after.strip_prefix('\n').unwrap_or(after);
            format!("{}{generated}{after}", &doc[..b])
        }
        _ => format!("{doc}\n{generated}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_splicing() {
        let mut sec = Section::new("Capture", "What.", &["handler", "time"]);
        sec.row(vec!["ours".into(), secs(Duration::from_millis(1500))]);
        sec.note("goal met");
        let md = sec.markdown();
        assert!(
            md.contains("| handler | time |\n|---|---|\n| ours | 1.500 s |"),
            "{md}"
        );
        assert!(md.contains("- goal met"), "{md}");

        let doc = format!("# B\nprose\n{BEGIN}\nold\n{END}\nafter\n");
        let gen = format!("{BEGIN}\nnew\n{END}\n");
        assert_eq!(
            splice(&doc, &gen),
            format!("# B\nprose\n{BEGIN}\nnew\n{END}\nafter\n")
        );
        assert!(splice("# B\n", &gen).ends_with(&gen));
        assert_eq!(ratio(2.0), "2.00×");
    }
}
