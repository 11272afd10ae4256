"""A demo MCP server with one tool, `forecast(city)`: a made-up but stable weather forecast.

Run over stdio (what pao starts from a tools file) or, with ``--http PORT``, as a
streamable-HTTP server on 127.0.0.1:PORT/mcp. Nothing is fetched from the network:
the same city always gets the same forecast, so demos and tests can check it.
"""

from __future__ import annotations

import argparse
import hashlib
from typing import TypedDict

from mcp.server.fastmcp import FastMCP

server = FastMCP("weather-mcp", log_level="WARNING")

# Fixed answers for the cities the examples use; any other city gets one derived
# from its name.
KNOWN: dict[str, tuple[int, int, str]] = {
    "chisinau": (3, -2, "light snow"),
    "london": (9, 4, "drizzle"),
    "new york": (6, -1, "clear"),
}
CONDITIONS = ("clear", "partly cloudy", "overcast", "light rain", "fog", "light snow", "windy")


class Forecast(TypedDict):
    city: str
    summary: str
    high_c: int
    low_c: int
    conditions: str


@server.tool()
def forecast(city: str) -> Forecast:
    """Today's forecast for a city: a one-line summary plus high and low in °C."""
    name = " ".join(city.split()) or "Nowhere"
    known = KNOWN.get(name.lower())
    if known is None:
        digest = hashlib.sha256(name.lower().encode()).digest()
        high = digest[0] % 35 - 5
        known = (high, high - 3 - digest[1] % 8, CONDITIONS[digest[2] % len(CONDITIONS)])
    high_c, low_c, conditions = known
    return Forecast(
        city=name,
        summary=f"{name}: {high_c}°C, {conditions}",
        high_c=high_c,
        low_c=low_c,
        conditions=conditions,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
    else:
        server.settings.port = args.http
        server.run("streamable-http")


if __name__ == "__main__":
    main()
