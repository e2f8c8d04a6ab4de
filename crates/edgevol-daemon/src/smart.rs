//! Drive health from SMART, read with `smartctl --json` (smartmontools).
//!
//! Only block devices are asked (files have no SMART). `smartctl` can take
//! seconds on a busy or failing drive, so each report is kept for
//! [`MAX_AGE`] and a run is abandoned after [`TIMEOUT`]; a missing
//! `smartctl` means no report at all (the pool status simply has none).

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgevol_api::{PoolStatus, SmartHealth};
use parking_lot::Mutex;
use serde_json::Value;

/// How long a report is reused.
pub const MAX_AGE: Duration = Duration::from_secs(300);
/// How long one `smartctl` run may take.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Reports by device path, and where `smartctl` is.
pub struct SmartCache {
    smartctl: Option<PathBuf>,
    reports: Mutex<HashMap<String, (Instant, SmartHealth)>>,
}

impl Default for SmartCache {
    fn default() -> Self {
        SmartCache::new(find_smartctl())
    }
}

/// `smartctl` on the PATH or in the sbin directories (not on a normal
/// user's PATH on Debian).
fn find_smartctl() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join("smartctl"))
        .find(|p| p.is_file())
}

impl SmartCache {
    /// A cache that runs `smartctl` (None: no SMART reports).
    pub fn new(smartctl: Option<PathBuf>) -> SmartCache {
        SmartCache {
            smartctl,
            reports: Mutex::new(HashMap::new()),
        }
    }

    /// Fill in the SMART report of every block device of `st`.
    pub fn annotate(&self, st: &mut PoolStatus) {
        for d in &mut st.devices {
            if d.block_device {
                d.smart = self.report(&d.path);
            }
        }
    }

    /// The report of device `path` (cached), or None without `smartctl`.
    pub fn report(&self, path: &str) -> Option<SmartHealth> {
        let smartctl = self.smartctl.as_ref()?;
        if let Some((at, r)) = self.reports.lock().get(path) {
            if at.elapsed() < MAX_AGE {
                return Some(r.clone());
            }
        }
        let r = run(smartctl, path);
        self.reports
            .lock()
            .insert(path.to_string(), (Instant::now(), r.clone()));
        Some(r)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Run `smartctl --json -i -H -A DEVICE` and parse what it said.
fn run(smartctl: &PathBuf, path: &str) -> SmartHealth {
    let failed = |e: String| SmartHealth {
        error: Some(e),
        checked_at: now_secs(),
        ..SmartHealth::default()
    };
    let mut child = match Command::new(smartctl)
        .args(["--json=c", "-i", "-H", "-A", path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot run {}: {e}", smartctl.display())),
    };
    let end = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return failed(format!("smartctl took longer than {TIMEOUT:?}"));
            }
            Err(e) => return failed(format!("smartctl: {e}")),
        }
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let mut h = parse(&out);
    h.checked_at = now_secs();
    h
}

/// Parse `smartctl --json` output (ATA, NVMe or SCSI).
pub fn parse(json: &str) -> SmartHealth {
    let v: Value = match serde_json::from_str(json) {
        Ok(v) => v,
        Err(e) => {
            return SmartHealth {
                error: Some(format!("smartctl printed no JSON: {e}")),
                ..SmartHealth::default()
            }
        }
    };
    let u = |p: &str| v.pointer(p).and_then(Value::as_u64);
    let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    // ATA attributes by id: their raw values.
    let ata = |id: u64| {
        v.pointer("/ata_smart_attributes/table")
            .and_then(Value::as_array)?
            .iter()
            .find(|a| a["id"].as_u64() == Some(id))
            .and_then(|a| a.pointer("/raw/value"))
            .and_then(Value::as_u64)
    };
    let nvme = |k: &str| u(&format!("/nvme_smart_health_information_log/{k}"));
    // Messages of severity "error" explain a missing report (no SMART
    // support, unknown device type, permission).
    let errors: Vec<String> = v
        .pointer("/smartctl/messages")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter(|x| x["severity"] == "error")
                .filter_map(|x| x["string"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    SmartHealth {
        passed: v.pointer("/smart_status/passed").and_then(Value::as_bool),
        model: s("/model_name"),
        serial: s("/serial_number"),
        protocol: s("/device/protocol"),
        temperature_c: v.pointer("/temperature/current").and_then(Value::as_i64),
        power_on_hours: u("/power_on_time/hours"),
        reallocated_sectors: ata(5),
        pending_sectors: ata(197),
        offline_uncorrectable: ata(198),
        reported_uncorrectable: ata(187),
        critical_warning: nvme("critical_warning"),
        percentage_used: nvme("percentage_used"),
        available_spare: nvme("available_spare"),
        media_errors: nvme("media_errors"),
        error: (!errors.is_empty()).then(|| errors.join("; ")),
        checked_at: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from smartctl 7.3 on a SATA SSD.
    const ATA: &str = r#"{
      "json_format_version": [1, 0],
      "smartctl": {"version": [7, 3], "exit_status": 0},
      "device": {"name": "/dev/sda", "info_name": "/dev/sda [SAT]", "type": "sat", "protocol": "ATA"},
      "model_name": "Samsung SSD 860 EVO 500GB",
      "serial_number": "S3Z1NB0K000000",
      "smart_status": {"passed": true},
      "ata_smart_attributes": {"revision": 1, "table": [
        {"id": 5, "name": "Reallocated_Sector_Ct", "value": 100, "worst": 100, "thresh": 10,
         "when_failed": "", "raw": {"value": 3, "string": "3"}},
        {"id": 9, "name": "Power_On_Hours", "value": 95, "worst": 95, "thresh": 0,
         "when_failed": "", "raw": {"value": 24011, "string": "24011"}},
        {"id": 187, "name": "Reported_Uncorrect", "value": 100, "worst": 100, "thresh": 0,
         "when_failed": "", "raw": {"value": 0, "string": "0"}},
        {"id": 197, "name": "Current_Pending_Sector", "value": 100, "worst": 100, "thresh": 0,
         "when_failed": "", "raw": {"value": 1, "string": "1"}}
      ]},
      "power_on_time": {"hours": 24011},
      "temperature": {"current": 31}
    }"#;

    /// Trimmed from smartctl 7.3 on an NVMe drive.
    const NVME: &str = r#"{
      "smartctl": {"version": [7, 3], "exit_status": 0},
      "device": {"name": "/dev/nvme0", "type": "nvme", "protocol": "NVMe"},
      "model_name": "WD Blue SN570 1TB",
      "serial_number": "22000000000000",
      "smart_status": {"passed": false},
      "nvme_smart_health_information_log": {
        "critical_warning": 4, "temperature": 44, "available_spare": 100,
        "available_spare_threshold": 10, "percentage_used": 7, "media_errors": 2
      },
      "temperature": {"current": 44},
      "power_on_time": {"hours": 6120}
    }"#;

    /// What smartctl 7.3 prints for a virtio disk (as on this project's VMs).
    const NO_SMART: &str = r#"{
      "json_format_version": [1, 0],
      "smartctl": {"version": [7, 3], "argv": ["smartctl", "-j", "/dev/vda"],
        "messages": [{"string": "/dev/vda: Unable to detect device type", "severity": "error"}],
        "exit_status": 1},
      "local_time": {"time_t": 1796080281, "asctime": "Mon Nov 30 23:11:21 2026 UTC"}
    }"#;

    #[test]
    fn ata_report_has_the_verdict_and_the_failure_predictors() {
        let h = parse(ATA);
        assert_eq!(h.passed, Some(true));
        assert_eq!(h.protocol.as_deref(), Some("ATA"));
        assert_eq!(h.model.as_deref(), Some("Samsung SSD 860 EVO 500GB"));
        assert_eq!(h.reallocated_sectors, Some(3));
        assert_eq!(h.pending_sectors, Some(1));
        assert_eq!(h.reported_uncorrectable, Some(0));
        assert_eq!(h.offline_uncorrectable, None);
        assert_eq!((h.temperature_c, h.power_on_hours), (Some(31), Some(24011)));
        assert_eq!(h.media_errors, None);
        assert_eq!(h.error, None);
    }

    #[test]
    fn nvme_report_has_wear_and_media_errors() {
        let h = parse(NVME);
        assert_eq!(h.passed, Some(false));
        assert_eq!(h.critical_warning, Some(4));
        assert_eq!(h.percentage_used, Some(7));
        assert_eq!(h.available_spare, Some(100));
        assert_eq!(h.media_errors, Some(2));
        assert_eq!(h.reallocated_sectors, None);
    }

    #[test]
    fn a_device_without_smart_says_why() {
        let h = parse(NO_SMART);
        assert_eq!(h.passed, None);
        assert_eq!(
            h.error.as_deref(),
            Some("/dev/vda: Unable to detect device type")
        );
        assert!(parse("").error.is_some_and(|e| e.contains("no JSON")));
    }

    #[test]
    fn reports_are_cached_and_absent_without_smartctl() {
        assert_eq!(SmartCache::new(None).report("/dev/sda"), None);
        // A stand-in smartctl that counts its runs.
        let dir = tempfile::tempdir().expect("tempdir");
        let (script, count) = (dir.path().join("smartctl"), dir.path().join("runs"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho run >> {}\ncat <<'EOF'\n{ATA}\nEOF\n",
                count.display()
            ),
        )
        .expect("write script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let c = SmartCache::new(Some(script));
        let a = c.report("/dev/sdz").expect("report");
        let b = c.report("/dev/sdz").expect("report");
        assert_eq!(a, b);
        assert_eq!(a.passed, Some(true));
        assert!(a.checked_at > 0);
        let runs = std::fs::read_to_string(&count).expect("runs");
        assert_eq!(
            runs.lines().count(),
            1,
            "the second report came from the cache"
        );
    }
}
