"""sessionadmin.secrets: encryption at rest and masking of MCP header/env values."""

from __future__ import annotations

from cryptography.fernet import Fernet
from django.test import SimpleTestCase, override_settings

from sessionadmin.secrets import SecretsError, decrypt_mapping, encrypt_mapping, mask, masked_mapping


class SecretsTests(SimpleTestCase):
    def test_it_round_trips_a_mapping_without_storing_plaintext(self) -> None:
        token = encrypt_mapping({"Authorization": "Bearer abcdef123456"})
        self.assertNotIn("abcdef123456", token)
        self.assertEqual(decrypt_mapping(token), {"Authorization": "Bearer abcdef123456"})

    def test_it_stores_an_empty_mapping_as_empty(self) -> None:
        self.assertEqual(encrypt_mapping({}), "")
        self.assertEqual(decrypt_mapping(""), {})

    def test_it_uses_the_configured_key(self) -> None:
        with override_settings(SESSIONADMIN_SECRETS_KEY=Fernet.generate_key().decode()):
            token = encrypt_mapping({"A": "1"})
            self.assertEqual(decrypt_mapping(token), {"A": "1"})
        with self.assertRaises(SecretsError):
            decrypt_mapping(token)  # derived from SECRET_KEY: another key

    def test_it_accepts_a_passphrase_as_key(self) -> None:
        with override_settings(SESSIONADMIN_SECRETS_KEY="correct horse battery staple"):
            self.assertEqual(decrypt_mapping(encrypt_mapping({"A": "1"})), {"A": "1"})

    def test_it_shows_only_the_last_characters(self) -> None:
        self.assertEqual(mask("Bearer abcdef123456"), "••••3456")
        self.assertEqual(mask("abcdefgh"), "••••gh")
        self.assertEqual(mask("abc"), "••••")
        self.assertEqual(masked_mapping({"K": "0123456789abcdef"}), {"K": "••••cdef"})
