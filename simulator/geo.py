"""Countries of the simulated audience: share, time zone, regions, residential IP blocks.

Country codes are ISO-3166-1 alpha-3 and regions ISO-3166-2 subdivision codes without
the country prefix, as OpenRTB ``device.geo`` carries them. Time zones are one whole-hour
offset per country (India's +5:30 is rounded to +5), enough for a diurnal cycle.
The residential blocks are illustrative ISP-like ranges, disjoint from
:data:`simulator.datacenters.DATACENTER_CIDRS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Country:
    code: str                           # ISO-3166-1 alpha-3 (OpenRTB geo.country)
    share: float                        # share of human traffic
    utc_offset: int                     # hours; local hour = (UTC hour + offset) mod 24
    regions: tuple[str, ...]            # ISO-3166-2 subdivision codes
    residential_cidrs: tuple[str, ...]  # where this country's home/mobile IPs come from


COUNTRIES: tuple[Country, ...] = (
    Country("USA", 0.45, -6, ("CA", "NY", "TX", "FL", "IL", "WA"),
            ("73.0.0.0/8", "24.0.0.0/10", "71.0.0.0/9", "172.56.0.0/13")),
    Country("GBR", 0.10, 0, ("ENG", "SCT", "WLS", "NIR"), ("86.128.0.0/10", "82.0.0.0/11")),
    Country("DEU", 0.08, 1, ("BY", "BE", "NW", "HH"), ("87.128.0.0/10", "91.0.0.0/11")),
    Country("FRA", 0.07, 1, ("IDF", "ARA", "PAC"), ("90.0.0.0/9", "86.192.0.0/11")),
    Country("CAN", 0.06, -5, ("ON", "QC", "BC"), ("70.24.0.0/13", "174.88.0.0/13")),
    Country("BRA", 0.07, -3, ("SP", "RJ", "MG"), ("177.0.0.0/10", "189.0.0.0/11")),
    Country("IND", 0.09, 5, ("MH", "KA", "DL"), ("117.192.0.0/10", "49.32.0.0/11")),
    Country("JPN", 0.05, 9, ("13", "27", "14"), ("126.0.0.0/8", "153.128.0.0/9")),
    Country("AUS", 0.03, 10, ("NSW", "VIC", "QLD"), ("101.160.0.0/11", "120.144.0.0/12")),
)

#: Relative human activity by local hour (0-23): low at night, an evening peak.
DIURNAL_PROFILE: tuple[float, ...] = (
    0.45, 0.32, 0.25, 0.22, 0.22, 0.28, 0.45, 0.70, 0.90, 1.00, 1.05, 1.10,
    1.15, 1.10, 1.08, 1.10, 1.15, 1.25, 1.40, 1.55, 1.60, 1.50, 1.20, 0.80,
)

__all__ = ["COUNTRIES", "DIURNAL_PROFILE", "Country"]
