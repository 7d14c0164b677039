"""Planted secrets, one per kind, in the formats their issuers use (values made up).

Shared by the unit corpus test (tests/test_redaction.py) and the one through the running proxy
(tests/e2e/test_secret_corpus.py). Each entry: kind, where it is planted, the secret value.
Where: `header:NAME` (a header of that name), `query:NAME`, `json:NAME`, `form:NAME`, `text`
(inside free text of a JSON field named `note`), `url` (as URL userinfo), `xml`.
"""

from __future__ import annotations

PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAplantedplantedplantedplantedplantedplantedplanted0\n"
    "plantedplantedplantedplantedplantedplantedplantedplantedplanted1==\n"
    "-----END RSA PRIVATE KEY-----"
)

CORPUS: list[tuple[str, str, str]] = [
    ("stripe secret key", "header:authorization", "sk_live_51PlantedStripeKey0000000000"),
    ("stripe restricted key", "json:key", "rk_live_51PlantedRestricted0000000000"),
    ("stripe webhook secret", "text", "whsec_PlantedWebhookSecret00000000"),
    ("slack bot token", "form:token", "xoxb-1234567890-1234567890-PlantedSlackBot"),
    (
        "slack webhook url",
        "text",
        "https://hooks.slack.com/services/T0PLANT/B0PLANT/PlantedHookSecret",
    ),
    ("github token", "header:x-github-token", "ghp_PlantedGitHubToken000000000000000000"),
    ("github fine-grained token", "text", "github_pat_11PLANTED0_PlantedFineGrainedToken00000"),
    ("gitlab token", "text", "glpat-PlantedGitLabToken0000"),
    (
        "sendgrid key",
        "header:x-sendgrid",
        "SG.PlantedSendGridKey00000.PlantedSendGridSecretPart000000000000000000",
    ),
    ("openai key", "json:openai", "sk-proj-PlantedOpenAIKey00000000000000000000"),
    ("anthropic key", "header:x-api-key", "sk-ant-api03-PlantedAnthropicKey000000000000"),
    ("aws access key id", "query:AWSAccessKeyId", "AKIAPLANTEDKEY000000"),
    (
        "aws secret access key",
        "text",
        "aws_secret_access_key=PlantedAwsSecretAccessKey0000000000000000",
    ),
    (
        "aws secret in a json field",
        "json:SecretAccessKey",
        "PlantedAwsSecretInJson00000000000000000000",
    ),
    (
        "jwt",
        "header:x-session",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJwbGFudGVkIn0.PlantedJwtSignature0000000",
    ),
    ("google api key", "query:key", "AIzaPlantedGoogleApiKey00000000000000000"),
    ("telegram bot token", "text", "123456789:PlantedTelegramToken00000000000000000"),
    ("hugging face token", "json:hf", "hf_PlantedHuggingFaceToken000000000000"),
    ("npm token", "text", "npm_PlantedNpmToken00000000000000000000000"),
    ("pypi token", "text", "pypi-AgEIcHlwaS5vcmc" + "P" * 72),
    ("azure storage key", "text", "AccountKey=" + "P" * 86 + "=="),
    (
        "discord bot token",
        "text",
        "MTAPlantedDiscordBot00000.Gplant.PlantedDiscordTokenPart00000000",
    ),
    ("mailchimp key", "text", "0123456789abcdef0123456789abcdef-us12"),
    ("square secret", "text", "sq0csp-" + "PlantedSquareOAuthSecret".ljust(43, "0")),
    ("twilio api key sid", "json:twilio", "SK0123456789abcdef0123456789abcdef"),
    ("pem private key", "json:private", PEM),
    ("url userinfo", "url", "planted-user:PlantedUrlPassword0"),
    (
        "basic auth outside authorization",
        "header:x-upstream-auth",
        "Basic cGxhbnRlZDpQbGFudGVkQmFzaWM=",
    ),
    ("card number in a stripe form", "form:card[number]", "4242424242424242"),
    ("card number in json text", "text", "4000 0566 5566 5556"),
    ("field named db_pass", "json:db_pass", "PlantedDbPass0"),
    ("field named pwd", "form:pwd", "PlantedPwd0"),
    ("field named passphrase", "json:passphrase", "Planted passphrase words"),
    ("field named session_id", "query:session_id", "PlantedSession0"),
    ("field named otp", "json:otp", "913374"),
    ("password in xml", "xml", "PlantedXmlPassword0"),
]
