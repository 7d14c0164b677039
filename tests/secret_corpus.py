"""Planted secrets, one per kind, in the formats their issuers use (values made up).

Shared by the unit corpus test (tests/test_redaction.py) and the one through the running proxy
(tests/e2e/test_secret_corpus.py). Each entry: kind, where it is planted, the secret value.
Where: `header:NAME` (a header of that name), `query:NAME`, `json:NAME`, `form:NAME`, `text`
(inside free text of a JSON field named `note`), `text:TEMPLATE` (the same, written into
TEMPLATE at `{}`: a command line, a sentence, a URL), `nested:NAME` (a field of a JSON document
kept as a string in a JSON field), `pair:NAME` (the `value` beside a `name` in a JSON list, as
ECS environments and HAR headers have them), `path:TEMPLATE` (the path of a request), `url`
(as URL userinfo), `xml`, `xml-pair:NAME` (an XML <Key>NAME</Key><Value>…</Value> entry).
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
    # Webhook URLs whose path is the credential, as a request's path and in text
    ("slack webhook path", "path:/services/T0PLANT/B0PLANT/{}", "PlantedSlackHookPath0"),
    (
        "discord webhook path",
        "path:/api/webhooks/123456789012345678/{}",
        "PlantedDiscordWebhookToken0000000000000000000000000000000000000000",
    ),
    ("discord webhook url", "text:https://discord.com/api/webhooks/1234567/{}", "PlantedDcTok0"),
    ("zapier hook url", "text:https://hooks.zapier.com/hooks/catch/123456/{}/", "PlantedZap0"),
    (
        "office 365 connector url",
        "text:https://acme.webhook.office.com/webhookb2/a-1@b-2/IncomingWebhook/{}/c-3",
        "PlantedOffice365Hook0",
    ),
    # Named secrets inside strings: JSON kept as a string, configs, header lines, commands
    ("json in a string", "nested:password", "PlantedNestedPassword0"),
    ("json in a string, client secret", "nested:client_secret", "PlantedNestedClientSecret0"),
    ("camel-case key in a string", 'text:{{"apiKey": "{}"}}', "PlantedApiKeyInString0"),
    ("spaced assignment", "text:DB_PASSWORD = {}", "PlantedSpacedEnv0"),
    ("hyphenated header line", "text:Api-Key: {}", "PlantedHyphenHeader0"),
    (
        "header line in curl",
        'text:curl -H "X-Api-Key: {}" https://api.example.com',
        "PlantedCurlHdr0",
    ),
    ("mysql -p", "text:mysql -uroot -p{} prod", "PlantedMysqlPw0"),
    ("psql --password", "text:psql --password {}", "PlantedPsqlPw0"),
    ("curl -u", "text:curl -u admin:{} https://x", "PlantedCurlUserPw0"),
    ("docker login -p", "text:docker login -u bot -p {} registry.example.com", "PlantedDocker0"),
    ("secret said in words", "text:Your new API key is {}", "PlantedSaidKey0"),
    ("password said in words", "text:created user; initial password is {}", "PlantedSaidPw0"),
    # Name/value pairs
    ("ecs environment pair", "pair:DB_PASSWORD", "PlantedEcsEnvValue0"),
    ("env var named _KEY", "pair:STRIPE_KEY", "PlantedStripeKeyEnv0"),
    ("xml key/value pair", "xml-pair:db_password", "PlantedXmlPairValue0"),
    # Credential headers that are not Authorization or Cookie
    ("x-authorization header", "header:x-authorization", "PlantedXAuthorization0"),
    ("authentication header", "header:authentication", "PlantedAuthentication0"),
    ("x-auth header", "header:x-auth", "PlantedXAuth0"),
    ("forwarded authorization", "header:x-forwarded-authorization", "PlantedFwdAuthz0"),
    ("cookie2 header", "header:cookie2", "sid=PlantedCookie2"),
    (
        "docker registry auth",
        "header:x-registry-auth",
        "eyJ1c2VybmFtZSI6InUiLCJwYXNzd29yZCI6IlBsYW50ZWRSZWdpc3RyeSJ9",
    ),
    ("sentry auth", "header:x-sentry-auth", "Sentry sentry_version=7, sentry_key=PlantedSentry0"),
    # Names and forms of secrets
    ("field named pw", "json:pw", "PlantedPw0"),
    ("field named passcode", "json:passcode", "PlantedPasscode0"),
    ("field named pin_code", "json:pin_code", "PlantedPinCode0"),
    ("oauth code", "form:code", "PlantedOAuthCode0"),
    ("pkce code verifier", "form:code_verifier", "PlantedCodeVerifier0"),
    ("pwd in a connection string", "text:Server=db;Uid=app;Pwd={};", "PlantedConnPwd0"),
    ("redis url without a user", "text:redis://:{}@cache:6379", "PlantedRedisPw0"),
    (
        "azure sas signature",
        "text:https://a.blob.core.windows.net/c/b?sv=2021&sig={}",
        "PlantedSas0",
    ),
    ("lower-case bearer", "text:bearer {}", "PlantedLowerBearer0"),
    ("double-encoded token", "text:https%253A%252F%252Fx%252F%253Ftoken%253D{}", "PlantedDblEnc0"),
]
