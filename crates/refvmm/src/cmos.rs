//! The PC's CMOS RTC and NVRAM (the Motorola MC146818A every PC chipset still carries): port 0x70
//! selects a register, port 0x71 reads or writes it.
//!
//! What a guest finds:
//!
//! | index | register |
//! |---|---|
//! | 0x00, 0x02, 0x04 | seconds, minutes, hours: the host's UTC wall clock, read at each access |
//! | 0x06, 0x07, 0x08, 0x09 | day of week (1 = Sunday), day of month, month, year in the century: the same |
//! | 0x32 | the century (the PC/AT convention; ACPI's FADT `CENTURY` field would name it) |
//! | 0x0A | register A: the 32.768 kHz divider and 1024 Hz rate (0x26) as written; update-in-progress (bit 7) always clear |
//! | 0x0B | register B: as written, 0x02 at power-on (24-hour, BCD); its DM (bit 2) and 24/12 (bit 1) bits choose how the time registers read |
//! | 0x0C | register C: always 0 (no interrupt flag is ever set: no periodic, alarm or update interrupt, and no IRQ 8) |
//! | 0x0D | register D: always 0x80 (valid RAM and time: the "battery" is good) |
//! | every other index | NVRAM: keeps what the guest writes (the alarm registers 0x01/0x03/0x05 too); Linux writes the shutdown status byte 0x0F before it starts each AP (arch/x86/kernel/smpboot.c, the warm-reset vector) |
//!
//! Bit 7 of the index is the NMI-disable bit on a PC (the chipset routes it to the NMI gate, not
//! to the RTC): it selects nothing and is ignored, as QEMU's `mc146818rtc` and cloud-hypervisor's
//! `cmos` do. Reading the index port gives 0xff (it is write-only on a PC).
//!
//! Writes to the time registers are ignored, and the time always reads as the host's: a VM has no
//! battery-backed clock of its own, and a Linux guest under KVM takes its wall clock from kvmclock
//! (the host's) anyway; an offset kept for a guest that sets the RTC (`hwclock --systohc`) would
//! only last as long as this process and would make the RTC disagree with kvmclock within it.

use std::time::{Duration, SystemTime};

use kvm_runloop::reexports::vm_device::MutDevicePio;
use kvm_runloop::reexports::vm_device::bus::{PioAddress, PioAddressOffset};

/// The index port; the data port follows it.
pub const CMOS_PORT: u16 = 0x70;
/// Index and data.
pub const CMOS_PORTS: u16 = 2;

/// Bytes of CMOS RAM the index reaches (bit 7 is the NMI gate's).
const RAM_SIZE: usize = 128;
const INDEX_MASK: u8 = 0x7f;

const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const DAY_OF_WEEK: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

/// Register A: update in progress (read-only).
const REG_A_UIP: u8 = 0x80;
/// Register A at power-on: divider 010 (32.768 kHz time base), rate 0110 (1024 Hz), as a PC BIOS
/// leaves it.
const REG_A_DEFAULT: u8 = 0x26;
/// Register B: data mode binary (clear: BCD).
const REG_B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour mode (clear: 12-hour, bit 7 of the hours register is PM).
const REG_B_24H: u8 = 0x02;
/// Register B at power-on: 24-hour, BCD (QEMU's and SeaBIOS's choice; what Linux expects).
const REG_B_DEFAULT: u8 = REG_B_24H;
/// Register D: valid RAM and time.
const REG_D_VRT: u8 = 0x80;
/// Hours register in 12-hour mode: PM.
const HOURS_PM: u8 = 0x80;

/// The CMOS RTC and NVRAM as a port-IO device on [`CMOS_PORT`]..+[`CMOS_PORTS`].
pub struct Cmos {
    /// The register the next data access reaches (NMI bit masked off).
    index: u8,
    /// NVRAM, registers A and B included; the time registers' bytes are never read.
    ram: [u8; RAM_SIZE],
    /// Time since the Unix epoch, UTC: the host's wall clock, or a fixed time in tests.
    clock: fn() -> Duration,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::with_clock(host_utc)
    }
}

impl Cmos {
    /// A CMOS whose time is the host's UTC wall clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// A CMOS whose time comes from `clock` (time since the Unix epoch, UTC).
    pub fn with_clock(clock: fn() -> Duration) -> Self {
        let mut ram = [0; RAM_SIZE];
        ram[usize::from(REG_A)] = REG_A_DEFAULT;
        ram[usize::from(REG_B)] = REG_B_DEFAULT;
        Cmos {
            index: 0,
            ram,
            clock,
        }
    }

    /// Register `index` as the guest reads it.
    fn read_register(&self, index: u8) -> u8 {
        match index {
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY => {
                let now = CivilTime::from_unix_seconds((self.clock)().as_secs());
                self.time_register(index, &now)
            }
            // The time is computed at each read, so no update is ever in progress.
            REG_A => self.ram[usize::from(REG_A)] & !REG_A_UIP,
            REG_C => 0,
            REG_D => REG_D_VRT,
            _ => self.ram[usize::from(index)],
        }
    }

    /// Register `index` takes `value`.
    fn write_register(&mut self, index: u8, value: u8) {
        match index {
            // The host's clock is the time (see the module docs); C and D are read-only.
            SECONDS | MINUTES | HOURS | DAY_OF_WEEK | DAY_OF_MONTH | MONTH | YEAR | CENTURY
            | REG_C | REG_D => {}
            REG_A => self.ram[usize::from(REG_A)] = value & !REG_A_UIP,
            _ => self.ram[usize::from(index)] = value,
        }
    }

    /// A time register of `now`, in the format register B asks for.
    fn time_register(&self, index: u8, now: &CivilTime) -> u8 {
        let b = self.ram[usize::from(REG_B)];
        let encode = |v: u8| if b & REG_B_DM_BINARY != 0 { v } else { bcd(v) };
        match index {
            SECONDS => encode(now.second),
            MINUTES => encode(now.minute),
            HOURS if b & REG_B_24H != 0 => encode(now.hour),
            // 12-hour mode: 12, 1, ..., 11 with bit 7 set from noon on.
            HOURS => {
                let pm = if now.hour >= 12 { HOURS_PM } else { 0 };
                let h = match now.hour % 12 {
                    0 => 12,
                    h => h,
                };
                encode(h) | pm
            }
            DAY_OF_WEEK => encode(now.weekday + 1),
            DAY_OF_MONTH => encode(now.day),
            MONTH => encode(now.month),
            YEAR => encode((now.year % 100) as u8),
            CENTURY => encode((now.year / 100 % 100) as u8),
            _ => 0,
        }
    }

    /// Handles the byte at `port_offset` (0 index, 1 data) of a guest read.
    fn read_port(&self, port_offset: u64) -> u8 {
        match port_offset {
            1 => self.read_register(self.index),
            // The index port is write-only.
            _ => 0xff,
        }
    }

    /// Handles the byte at `port_offset` of a guest write.
    fn write_port(&mut self, port_offset: u64, value: u8) {
        match port_offset {
            0 => self.index = value & INDEX_MASK,
            1 => self.write_register(self.index, value),
            _ => {}
        }
    }
}

impl MutDevicePio for Cmos {
    /// A wider access is taken a byte at a time from its first port, as the ISA bus splits it.
    fn pio_read(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.read_port(u64::from(offset) + i as u64);
        }
    }

    fn pio_write(&mut self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            self.write_port(u64::from(offset) + i as u64, v);
        }
    }
}

/// The host's wall clock since the Unix epoch (0 if the host's clock is set before 1970).
fn host_utc() -> Duration {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}

/// `v` (0-99) in binary-coded decimal.
fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

/// A UTC date and time of day, in the proleptic Gregorian calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: u64,
    /// 1-12.
    month: u8,
    /// 1-31.
    day: u8,
    /// 0 = Sunday.
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl CivilTime {
    /// The time `secs` seconds after 1970-01-01 00:00:00 UTC (leap seconds do not count, as in
    /// Unix time).
    fn from_unix_seconds(secs: u64) -> Self {
        let days = secs / 86_400;
        let of_day = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        CivilTime {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4) % 7) as u8,
            hour: (of_day / 3600) as u8,
            minute: (of_day / 60 % 60) as u8,
            second: (of_day % 60) as u8,
        }
    }
}

/// Year, month (1-12) and day (1-31) of the day `days` after 1970-01-01: Howard Hinnant's
/// `civil_from_days` ("chrono-Compatible Low-Level Date Algorithms"), for days on or after the
/// epoch. It counts in 400-year eras that start on 0000-03-01, so the leap day ends a year.
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    /// Days from 0000-03-01 to 1970-01-01.
    const EPOCH_FROM_ERA_START: u64 = 719_468;
    /// Days in a 400-year era.
    const ERA_DAYS: u64 = 146_097;
    let z = days + EPOCH_FROM_ERA_START;
    let era = z / ERA_DAYS;
    let day_of_era = z % ERA_DAYS; // 0..=146096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 = March, ..., 11 = February.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month as u8, day as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05 13:04:09 UTC, a Saturday.
    const SAT_AFTERNOON: u64 = 1_796_475_849;

    fn at_sat_afternoon() -> Duration {
        Duration::from_secs(SAT_AFTERNOON)
    }

    fn read(cmos: &mut Cmos, index: u8) -> u8 {
        let mut b = [0u8];
        cmos.pio_write(PioAddress(CMOS_PORT), 0, &[index]);
        cmos.pio_read(PioAddress(CMOS_PORT), 1, &mut b);
        b[0]
    }

    fn write(cmos: &mut Cmos, index: u8, value: u8) {
        cmos.pio_write(PioAddress(CMOS_PORT), 0, &[index]);
        cmos.pio_write(PioAddress(CMOS_PORT), 1, &[value]);
    }

    /// Seconds, minutes, hours, weekday, day, month, year, century.
    fn time(cmos: &mut Cmos) -> [u8; 8] {
        [
            SECONDS,
            MINUTES,
            HOURS,
            DAY_OF_WEEK,
            DAY_OF_MONTH,
            MONTH,
            YEAR,
            CENTURY,
        ]
        .map(|r| read(cmos, r))
    }

    #[test]
    fn a_fixed_time_reads_as_bcd_24_hour_at_power_on() {
        let mut cmos = Cmos::with_clock(at_sat_afternoon);
        assert_eq!(read(&mut cmos, REG_B), 0x02, "24-hour, BCD");
        assert_eq!(
            time(&mut cmos),
            [0x09, 0x04, 0x13, 0x07, 0x05, 0x12, 0x26, 0x20]
        );
    }

    #[test]
    fn register_b_chooses_binary_and_12_hour() {
        let mut cmos = Cmos::with_clock(at_sat_afternoon);
        write(&mut cmos, REG_B, REG_B_24H | REG_B_DM_BINARY);
        assert_eq!(time(&mut cmos), [9, 4, 13, 7, 5, 12, 26, 20]);
        // 12-hour binary: 1 PM is 1 with the PM bit.
        write(&mut cmos, REG_B, REG_B_DM_BINARY);
        assert_eq!(read(&mut cmos, HOURS), 0x80 | 1);
        // 12-hour BCD.
        write(&mut cmos, REG_B, 0);
        assert_eq!(read(&mut cmos, HOURS), 0x81);
        assert_eq!(read(&mut cmos, MINUTES), 0x04, "only the hours change");
    }

    #[test]
    fn midnight_and_noon_in_12_hour_mode() {
        // 2000-02-29 00:30:00 and 12:30:00 UTC (a leap day, a Tuesday).
        let mut cmos = Cmos::with_clock(|| Duration::from_secs(951_784_200));
        write(&mut cmos, REG_B, 0);
        assert_eq!(read(&mut cmos, HOURS), 0x12, "12 AM");
        assert_eq!(
            [DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY].map(|r| read(&mut cmos, r)),
            [0x03, 0x29, 0x02, 0x00, 0x20]
        );
        let mut cmos = Cmos::with_clock(|| Duration::from_secs(951_784_200 + 12 * 3600));
        write(&mut cmos, REG_B, 0);
        assert_eq!(read(&mut cmos, HOURS), 0x80 | 0x12, "12 PM");
        write(&mut cmos, REG_B, REG_B_DM_BINARY);
        assert_eq!(read(&mut cmos, HOURS), 0x80 | 12);
    }

    #[test]
    fn nvram_keeps_writes_and_time_writes_are_ignored() {
        let mut cmos = Cmos::with_clock(at_sat_afternoon);
        // What Linux does before starting an AP: shutdown status 0x0A (jump via 40:67).
        write(&mut cmos, 0x0f, 0x0a);
        for i in 0x0e..0x80u8 {
            if i != CENTURY {
                write(&mut cmos, i, i ^ 0x5a);
            }
        }
        for i in 0x0e..0x80u8 {
            if i != CENTURY {
                assert_eq!(read(&mut cmos, i), i ^ 0x5a, "NVRAM byte {i:#x}");
            }
        }
        // The alarm registers are RAM too.
        write(&mut cmos, 0x01, 0x59);
        assert_eq!(read(&mut cmos, 0x01), 0x59);
        // The time is the clock's whatever the guest writes; C and D are read-only.
        write(&mut cmos, SECONDS, 0x42);
        write(&mut cmos, CENTURY, 0x19);
        write(&mut cmos, REG_C, 0xff);
        write(&mut cmos, REG_D, 0);
        assert_eq!(read(&mut cmos, SECONDS), 0x09);
        assert_eq!(read(&mut cmos, CENTURY), 0x20);
        assert_eq!(read(&mut cmos, REG_C), 0);
        assert_eq!(read(&mut cmos, REG_D), 0x80);
    }

    #[test]
    fn register_a_keeps_its_divider_and_never_shows_an_update() {
        let mut cmos = Cmos::with_clock(at_sat_afternoon);
        assert_eq!(read(&mut cmos, REG_A), 0x26);
        // Linux's mc146818_set_time holds the divider in reset (0x70) while it writes.
        write(&mut cmos, REG_A, 0xf6);
        assert_eq!(read(&mut cmos, REG_A), 0x76, "UIP is read-only");
        write(&mut cmos, REG_A, 0x26);
        assert_eq!(read(&mut cmos, REG_A), 0x26);
    }

    #[test]
    fn the_nmi_bit_selects_nothing_and_the_index_port_reads_all_ones() {
        let mut cmos = Cmos::with_clock(at_sat_afternoon);
        // Firmware writes the shutdown byte's index as 0x8F, NMIs held off: the same register.
        write(&mut cmos, 0x80 | 0x0f, 0x0a);
        assert_eq!(read(&mut cmos, 0x0f), 0x0a);
        assert_eq!(read(&mut cmos, 0x80 | REG_D), 0x80);
        assert_eq!(read(&mut cmos, 0x80 | SECONDS), 0x09);
        let mut b = [0u8];
        cmos.pio_read(PioAddress(CMOS_PORT), 0, &mut b);
        assert_eq!(b[0], 0xff);
    }

    #[test]
    fn a_word_access_is_index_then_data() {
        let mut cmos = Cmos::with_clock(at_sat_afternoon);
        // outw 0x0a0f, 0x70: index 0x0f, then 0x0a to the data port.
        cmos.pio_write(PioAddress(CMOS_PORT), 0, &[0x0f, 0x0a]);
        assert_eq!(read(&mut cmos, 0x0f), 0x0a);
        let mut w = [0u8; 2];
        cmos.pio_read(PioAddress(CMOS_PORT), 0, &mut w);
        assert_eq!(w, [0xff, 0x0a]);
    }

    #[test]
    fn known_dates() {
        let t = CivilTime::from_unix_seconds(0);
        assert_eq!((t.year, t.month, t.day, t.weekday), (1970, 1, 1, 4));
        // 2001-09-09 01:46:40 UTC, a Sunday.
        let t = CivilTime::from_unix_seconds(1_000_000_000);
        assert_eq!(
            (
                t.year, t.month, t.day, t.weekday, t.hour, t.minute, t.second
            ),
            (2001, 9, 9, 0, 1, 46, 40)
        );
        // 2100 is not a leap year: 2100-02-28 is followed by 2100-03-01.
        let t = CivilTime::from_unix_seconds(4_107_456_000);
        assert_eq!((t.year, t.month, t.day), (2100, 2, 28));
        let t = CivilTime::from_unix_seconds(4_107_456_000 + 86_400);
        assert_eq!((t.year, t.month, t.day), (2100, 3, 1));
        // The last second of 1999, and the first of 2000.
        let t = CivilTime::from_unix_seconds(946_684_799);
        assert_eq!(
            (t.year, t.month, t.day, t.hour, t.minute, t.second),
            (1999, 12, 31, 23, 59, 59)
        );
        assert_eq!(CivilTime::from_unix_seconds(946_684_800).year, 2000);
    }

    #[test]
    fn dates_agree_with_the_c_library() {
        // Every 997,331 s (11.5 days, so each weekday, hour and month is hit) up to 2400.
        let mut secs: u64 = 0;
        while secs < 13_569_465_600 {
            let ours = CivilTime::from_unix_seconds(secs);
            let t = secs as libc::time_t;
            // SAFETY: `tm` is plain data, zeroes are a valid value; gmtime_r writes only into it.
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are to live locals of the right types.
            assert!(!unsafe { libc::gmtime_r(&t, &mut tm) }.is_null());
            let libc_time = CivilTime {
                year: (tm.tm_year + 1900) as u64,
                month: (tm.tm_mon + 1) as u8,
                day: tm.tm_mday as u8,
                weekday: tm.tm_wday as u8,
                hour: tm.tm_hour as u8,
                minute: tm.tm_min as u8,
                second: tm.tm_sec as u8,
            };
            assert_eq!(ours, libc_time, "at {secs}");
            secs += 997_331;
        }
    }
}
