"""The Secrets that Kafka credentials come from, kept for a while and shared by the resources naming them.

Every poll of a resource with credentials read its Secrets with a GET: at 1,000 such resources and a 5 s
interval that is 200 GETs a second on the API server, and a thread hop and about a millisecond of the
operator's CPU per poll. Credentials change rarely, so a Secret found is kept for `refresh_seconds`
(`LAGPILOT_SECRET_REFRESH_SECONDS`, 60) for every resource that names it. What keeps it correct:

* a Secret that does not exist is not kept: it is asked for on every poll, so one created late is used
  on the next poll (as before);
* a resource whose lag read failed has its Secrets read again on its next poll (`forget`): a rotated
  password or certificate that the cluster refuses with the old one is picked up at once;
* a rotation that the old credentials still pass is picked up within `refresh_seconds`;
* when a kept Secret is due, one poll reads it again and the others meanwhile use the kept one, so a
  thousand resources naming one Secret make one GET per refresh, not a thousand.

The values stay in this process, as before: kept as the API server sent them (base64), decoded per poll
(`kafka_lag.decode_secret_keys`), never logged. The GET itself (`read`) is the caller's, so this holds no
client and is unit-tested without an API server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

SECRET_REFRESH_SECONDS = float(os.environ.get("LAGPILOT_SECRET_REFRESH_SECONDS", "60"))

# (namespace, name) -> the Secret's data (base64 values), or None when it does not exist.
SecretRead = Callable[[str, str], Mapping[str, str] | None]


@dataclass
class SecretCache:
    read: SecretRead
    """Blocking (a GET): `fetch` calls it, in a thread."""
    refresh_seconds: float = SECRET_REFRESH_SECONDS
    clock: Callable[[], float] = time.monotonic
    _kept: dict[tuple[str, str], tuple[float, Mapping[str, str]]] = field(default_factory=dict)
    """Per Secret found: when it was read, and its data."""
    _refreshing: set[tuple[str, str]] = field(default_factory=set)

    def to_fetch(self, namespace: str, names: Iterable[str]) -> list[str]:
        """The Secrets a poll must read before it has credentials: those not kept, and those due whose new
        read nobody else has started (that poll reads it; the others use the kept one meanwhile)."""
        now = self.clock()
        due: list[str] = []
        for name in names:
            key = (namespace, name)
            kept = self._kept.get(key)
            if kept is None:
                due.append(name)
            elif now - kept[0] >= self.refresh_seconds and key not in self._refreshing:
                self._refreshing.add(key)
                due.append(name)
        return due

    def fetch(self, namespace: str, names: Iterable[str]) -> None:
        """Read `names` (blocking); keep the ones found, drop the ones gone."""
        for name in names:
            key = (namespace, name)
            try:
                data = self.read(namespace, name)
                if data is None:
                    self._kept.pop(key, None)
                else:
                    self._kept[key] = (self.clock(), data)
            finally:
                self._refreshing.discard(key)

    def data(self, namespace: str, names: Iterable[str]) -> dict[str, Mapping[str, str]]:
        """The kept data of `names` that exist."""
        return {name: kept[1] for name in names if (kept := self._kept.get((namespace, name))) is not None}

    def forget(self, namespace: str, names: Iterable[str]) -> None:
        """The next poll reads these again (a lag read with them failed)."""
        for name in names:
            self._kept.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._kept)
