// A real OpenID Provider for the sign-in tests: panva's oidc-provider (OpenID Certified), on loopback, with its
// development login (any login name, any password). The tests start it the way a team's Keycloak, Okta or
// Entra would be used: discovery, authorization code with PKCE, signed ID tokens, userinfo, end session.
//
// Environment:
//   OIDC_PORT          the port to listen on, on 127.0.0.1
//   OIDC_CLIENTS       JSON array of client metadata (client_id, client_secret, redirect_uris, …)
//   OIDC_ACCOUNTS      JSON object: login name → claims ({"email": …, "groups": […]}); other names get
//                      {email: NAME@example.test}
//   OIDC_ID_TOKEN_CLAIMS  "all" (default) puts email and groups in the ID token; "none" leaves them to
//                      the userinfo endpoint, as many providers do
// It prints one line "ready ISSUER" on stdout once it listens, and stops when stdin closes.
import Provider from "oidc-provider";

const port = Number(process.env.OIDC_PORT ?? "0");
const clients = JSON.parse(process.env.OIDC_CLIENTS ?? "[]");
const accounts = JSON.parse(process.env.OIDC_ACCOUNTS ?? "{}");
const inIdToken = (process.env.OIDC_ID_TOKEN_CLAIMS ?? "all") === "all";
const issuer = `http://127.0.0.1:${port}`;

function claimsOf(login) {
  const known = accounts[login] ?? {};
  return { sub: login, email: `${login}@example.test`, email_verified: true, ...known };
}

const provider = new Provider(issuer, {
  clients,
  claims: { openid: ["sub"], email: ["email", "email_verified"], groups: ["groups"], profile: ["name"] },
  scopes: ["openid", "email", "profile", "groups", "offline_access"],
  conformIdTokenClaims: !inIdToken,
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return claimsOf(id); } };
  },
  // The development login asks for consent: grant what the client asked for, as a team's provider would
  // for its own first-party app.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope(ctx.oidc.params.scope ?? "openid");
    grant.addOIDCClaims(["email", "email_verified", "groups", "name"]);
    await grant.save();
    return grant;
  },
  ttl: { Session: 600, Interaction: 600, Grant: 600, AccessToken: 600, IdToken: 600, AuthorizationCode: 60 },
});
provider.proxy = false;

const server = provider.listen(port, "127.0.0.1", () => {
  process.stdout.write(`ready ${issuer}\n`);
});
process.stdin.resume();
process.stdin.on("end", () => {
  server.close();
  process.exit(0);
});
