"""Contacts, channel URLs and what may be stored of a channel's error: no server needed."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from service.alerts.channels import (
    AppriseChannel,
    ContactBook,
    Contacts,
    build_channels,
    parse_contacts,
    redact,
)

SLACK_URL = "slack://T0RACINE0/B0ALERTS0/abcdefghijklmnopqrstuvwx"
TWILIO_URL = "twilio://AC" + "a" * 32 + ":" + "b" * 32 + "@+15550100000"
EMAIL_URL = "mailtos://alerts:s3cret@smtp.racine.example:587?from=alerts@racine.example"


def test_contacts_are_sorted_into_email_phone_and_slack_handle():
    contacts = parse_contacts(["devops@racine.example", "+1 555 010 0001", "@devops", "<@U024BE7LH>"],
                              setting="ALERT_RECIPIENTS_P0")

    assert contacts == Contacts(emails=("devops@racine.example",), phones=("+15550100001",),
                                slack_handles=("@devops", "<@U024BE7LH>"))
    assert contacts.targets("email") == ("devops@racine.example",)
    assert contacts.targets("sms") == ("+15550100001",)
    assert contacts.targets("slack") == ("",)


@pytest.mark.parametrize("entry", ["devops", "5550100001", "+12", "a@b", "devops@racine.example;x"])
def test_an_unrecognised_contact_is_a_settings_error_naming_the_setting(entry):
    with pytest.raises(ValueError, match="ALERT_ESCALATION_CONTACTS"):
        parse_contacts([entry], setting="ALERT_ESCALATION_CONTACTS")


def test_each_email_goes_to_one_recipient_and_keeps_the_smtp_settings():
    channel = AppriseChannel(name="email", url=EMAIL_URL, setting="ALERT_EMAIL_URL")

    url = channel.url_for("cto@racine.example")

    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.port, parts.password) == \
        ("mailtos", "smtp.racine.example", 587, "s3cret")
    assert parse_qs(parts.query) == {"from": ["alerts@racine.example"], "to": ["cto@racine.example"]}


def test_an_email_url_with_its_own_to_is_replaced_not_added_to():
    channel = AppriseChannel(name="email", url=EMAIL_URL + "&to=everyone@racine.example",
                             setting="ALERT_EMAIL_URL")

    assert parse_qs(urlsplit(channel.url_for("cto@racine.example")).query)["to"] == \
        ["cto@racine.example"]


def test_each_sms_goes_to_one_number_as_a_path_target():
    channel = AppriseChannel(name="sms", url=TWILIO_URL, setting="ALERT_SMS_URL")

    assert channel.url_for("+15550100002") == TWILIO_URL + "/+15550100002"


def test_slack_posts_to_its_webhook_whatever_the_target():
    channel = AppriseChannel(name="slack", url=SLACK_URL, setting="ALERT_SLACK_URL")

    assert channel.url_for("") == SLACK_URL


def test_a_url_apprise_cannot_use_stops_the_start_naming_the_setting():
    with pytest.raises(ValueError, match="ALERT_SMS_URL"):
        build_channels({"ALERT_SMS_URL": "nosuchscheme://whatever"})


def test_only_channels_with_a_url_are_built():
    channels = build_channels({"ALERT_SLACK_URL": SLACK_URL, "ALERT_EMAIL_URL": None})

    assert sorted(channels) == ["slack"]


def test_stored_channel_errors_hold_no_address_number_url_or_log_prefix():
    captured = ("2026-11-29 16:41:26,923 - WARNING - Failed to send Twilio notification to "
                "+15550100002: Unauthorized error=401.\n"
                "2026-11-29 16:41:27,001 - WARNING - Connection error while submitting email "
                "to cto@racine.example via mailtos://alerts:s3cret@smtp.racine.example\n")

    text = redact(captured)

    assert "+15550100002" not in text and "cto@racine.example" not in text
    assert "s3cret" not in text and "mailtos://" not in text
    assert "WARNING" not in text
    assert "Unauthorized error=401" in text
    assert text.count(" | ") == 1


def test_escalation_levels_follow_the_severity_recipients_and_stop_at_the_last_list():
    book = ContactBook.from_config({
        "ALERT_RECIPIENTS": {"P0": ["devops@racine.example", "cto@racine.example"],
                             "P1": ["devops@racine.example"], "P2": [], "P3": []},
        "ALERT_ESCALATION_CONTACTS": [["lead@racine.example", "+15550100003"],
                                      ["cto@racine.example"]],
    })

    assert book.at_level("P1", 0).emails == ("devops@racine.example",)
    assert book.at_level("P1", 1) == Contacts(emails=("lead@racine.example",),
                                              phones=("+15550100003",))
    assert book.at_level("P1", 2).emails == ("cto@racine.example",)
    assert book.at_level("P1", 5).emails == ("cto@racine.example",)
    assert book.up_to("P1", 2).emails == ("devops@racine.example", "lead@racine.example",
                                          "cto@racine.example")
