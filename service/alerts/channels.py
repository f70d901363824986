"""Notification channels: Slack, e-mail and SMS, each an apprise URL from the settings.

A `Channel` sends one message to one recipient and raises `ChannelError` (with text safe
to store) when it could not. `AppriseChannel` is the implementation: apprise speaks
Slack's incoming webhooks (`slack://T.../B.../...`), SMTP (`mailtos://user:pass@host?from=`)
and Twilio's REST API (`twilio://SID:token@+from`), so one library covers every channel
and a deployment may point a channel at any other service apprise knows.

Recipients come from the contact lists: e-mail addresses go to the email channel (as the
URL's `to`), `+` phone numbers to the SMS channel (as URL path targets), and `@handles` are
mentioned in the Slack message.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import apprise

from service.alerts.exceptions import ChannelError

log = logging.getLogger(__name__)

SLACK, EMAIL, SMS = "slack", "email", "sms"
CHANNELS = (SLACK, EMAIL, SMS)
SETTINGS = {SLACK: "ALERT_SLACK_URL", EMAIL: "ALERT_EMAIL_URL", SMS: "ALERT_SMS_URL"}

# The policy: which channels each severity is sent through (P3 is only logged).
SEVERITY_CHANNELS = {"P0": (SLACK, EMAIL, SMS), "P1": (SLACK, EMAIL), "P2": (SLACK,), "P3": ()}

_EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
_PHONE = re.compile(r"^\+[0-9]{7,15}$")
_SLACK_HANDLE = re.compile(r"^(@[\w.\-]+|<[@!][\w|.\-]+>)$")


class Channel(Protocol):
    name: str
    # Whether the channel's URL alone names a recipient (used when a severity's contact
    # list has no entry for the channel).
    names_its_own_recipient: bool

    def send(self, *, title: str, body: str, target: str) -> None:
        """Deliver one message; raise ChannelError when it was not accepted."""


@dataclass(frozen=True)
class Contacts:
    """A contact list split by the channel that reaches each entry."""

    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()
    slack_handles: tuple[str, ...] = ()

    def targets(self, channel: str) -> tuple[str, ...]:
        if channel == EMAIL:
            return self.emails
        if channel == SMS:
            return self.phones
        return ("",)  # Slack: one post to the webhook's channel

    def __or__(self, other: Contacts) -> Contacts:
        def merged(a, b):
            return tuple(dict.fromkeys(a + b))
        return Contacts(merged(self.emails, other.emails), merged(self.phones, other.phones),
                        merged(self.slack_handles, other.slack_handles))


def parse_contacts(entries: Iterable[str], *, setting: str) -> Contacts:
    """Sort a contact list's entries by kind; anything unrecognised is a settings error."""
    emails, phones, handles = [], [], []
    for entry in entries:
        if _SLACK_HANDLE.match(entry):
            handles.append(entry)
        elif _EMAIL.match(entry):
            emails.append(entry)
        elif _PHONE.match(entry.replace(" ", "")):
            phones.append(entry.replace(" ", ""))
        else:
            raise ValueError(f"{setting}: {entry!r} is neither an e-mail address, a +phone "
                             "number (E.164) nor a Slack @handle")
    return Contacts(tuple(emails), tuple(phones), tuple(handles))


def _with_email_recipient(url: str, target: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "to"]
    query.append(("to", target))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _with_path_target(url: str, target: str) -> str:
    parts = urlsplit(url)
    path = parts.path.rstrip("/") + "/" + quote(target, safe="+")
    return urlunsplit(parts._replace(path=path))


_TARGETING = {EMAIL: _with_email_recipient, SMS: _with_path_target}

# What may be stored of a channel's error text: no addresses, numbers, URLs or tokens.
_REDACTIONS = (
    (re.compile(r"^\S+ \S+ - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - ", re.M), ""),
    (re.compile(r"[a-z][a-z0-9+.\-]*://\S+", re.I), "<url>"),
    (re.compile(r"[^\s@\"'<>]+@[^\s@\"'<>]+"), "<address>"),
    (re.compile(r"\+?\d[\d\s\-]{6,}\d"), "<number>"),
)


def redact(text: str, *, limit: int = 300) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (" | ".join(lines) or "the channel reported a failure")[:limit]


class AppriseChannel:
    """One channel through apprise; a new notifier per message, so nothing is shared
    between the sends of a worker's pool processes."""

    def __init__(self, *, name: str, url: str, setting: str):
        if not apprise.Apprise().add(url):
            raise ValueError(f"{setting} is not a URL apprise can send to (see the README)")
        self.name = name
        self._url = url

    @property
    def names_its_own_recipient(self) -> bool:
        """Whether the URL alone says who receives: an e-mail URL's `to=`, an SMS URL's
        number after the sender. Such a channel is sent to as configured when the
        severity's contact list has no entry for it."""
        parts = urlsplit(self._url)
        if self.name == EMAIL:
            return any(key == "to" and value for key, value in parse_qsl(parts.query))
        if self.name == SMS:
            return bool(parts.path.strip("/"))
        return True

    def url_for(self, target: str) -> str:
        return _TARGETING[self.name](self._url, target) if target and self.name in _TARGETING \
            else self._url

    def send(self, *, title: str, body: str, target: str) -> None:
        notifier = apprise.Apprise()
        if not notifier.add(self.url_for(target)):
            raise ChannelError(f"{self.name}: the recipient is not one the channel accepts")
        with apprise.LogCapture(level=logging.WARNING) as captured:
            delivered = notifier.notify(title=title, body=body)
            problems = captured.getvalue()
        if not delivered:
            raise ChannelError(f"{self.name}: {redact(problems)}")


def build_channels(config) -> dict[str, Channel]:
    """The channels whose URL is set; the others are only logged."""
    channels: dict[str, Channel] = {}
    for name, setting in SETTINGS.items():
        if config.get(setting):
            channels[name] = AppriseChannel(name=name, url=config[setting], setting=setting)
    return channels


@dataclass(frozen=True)
class ContactBook:
    """Who hears about an incident: first contacts per severity, then escalation levels."""

    first: dict[str, Contacts]
    levels: tuple[Contacts, ...]

    @classmethod
    def from_config(cls, config) -> ContactBook:
        first = {sev: parse_contacts(entries, setting=f"ALERT_RECIPIENTS_{sev}")
                 for sev, entries in config["ALERT_RECIPIENTS"].items()}
        levels = tuple(parse_contacts(level, setting="ALERT_ESCALATION_CONTACTS")
                       for level in config["ALERT_ESCALATION_CONTACTS"])
        return cls(first=first, levels=levels)

    def at_level(self, severity: str, level: int) -> Contacts:
        """Level 0 is the severity's own recipients; level n the n-th escalation list."""
        if level <= 0:
            return self.first.get(severity, Contacts())
        return self.levels[min(level, len(self.levels)) - 1] if self.levels else Contacts()

    def up_to(self, severity: str, level: int) -> Contacts:
        """Everyone told so far about an incident at `level` (for its resolved notice)."""
        contacts = self.at_level(severity, 0)
        for n in range(1, min(level, len(self.levels)) + 1):
            contacts = contacts | self.at_level(severity, n)
        return contacts
