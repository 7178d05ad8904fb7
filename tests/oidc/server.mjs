// A real OpenID Connect provider (npm oidc-provider) on loopback, for shcr's integration tests
// (tests/oidc.rs starts it). Not for anything else: in-memory storage, generated keys, fixed
// test clients and users.
//
//     node tests/oidc/server.mjs            prints {"issuer":"http://127.0.0.1:PORT"} on stdout
//
// What it issues, as JWT access tokens for the resource https://shcr.test/fhir (audience `shcr`):
// - client credentials for a trust's system: client `rx1-pas` (ODS code RX1 as `ods_code`);
// - user tokens carrying NHS CIS2-style role claims (`selected_roleid`, `nhsid_nrbac_roles`),
//   through a test grant standing in for the interactive login a portal would do;
// - tokens for another API (resource https://other.test, audience `other-api`).
// Test control (loopback only, never in a real provider):
//   POST /_test/keys {"keys": ["a", "b"], "sign": "b"}  publishes exactly those keys and signs new
//   tokens with `sign`; keys keep their material across calls, so "a" stays the same key.
// The process exits when its standard input closes, so it never outlives the test.

import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const SHCR = 'https://shcr.test/fhir';
const OTHER = 'https://other.test';
const USER_GRANT = 'urn:shcr:test:grant-type:user';

// CIS2-style users: a person may hold several roles; the token names the one selected at login.
const USERS = {
  '555021935107': {
    name: 'Dr Asha Patel',
    roles: [
      {
        person_roleid: '090123456789',
        org_code: 'A81001',
        role_code: 'S8000:G8000:R8000',
        role_name: '"Clinical":"Clinical Provision":"Clinical Practitioner Access Role"',
        activity_codes: ['B0360', 'B0380'],
      },
      {
        person_roleid: '090123456790',
        org_code: 'RX1',
        role_code: 'S0080:G0450:R5080',
        activity_codes: ['B0264'],
      },
    ],
  },
};

const keys = new Map(); // name -> private JWK
let published = [];
let signing;

function key(name) {
  if (!keys.has(name)) {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    keys.set(name, { ...privateKey.export({ format: 'jwk' }), kid: `test-${name}`, alg: 'RS256', use: 'sig' });
  }
  return keys.get(name);
}

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    jwks: { keys: published.map(key) },
    clients: [
      {
        client_id: 'rx1-pas',
        client_secret: 'rx1-pas-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: 'system/*.cruds',
        ods_code: 'RX1',
      },
      {
        client_id: 'portal',
        client_secret: 'portal-secret',
        grant_types: [USER_GRANT],
        response_types: [],
        redirect_uris: [],
        scope: 'user/*.rs',
      },
    ],
    scopes: ['openid', 'system/*.cruds', 'user/*.rs'],
    extraClientMetadata: { properties: ['ods_code'] },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: false },
      revocation: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => SHCR,
        useGrantedResource: () => true,
        getResourceServerInfo: (ctx, resource) => {
          const audience = { [SHCR]: 'shcr', [OTHER]: 'other-api' }[resource];
          if (!audience) throw new errors.InvalidTarget();
          return {
            audience,
            scope: 'system/*.cruds user/*.rs',
            accessTokenFormat: 'jwt',
            accessTokenTTL: 300,
            jwt: { sign: { alg: 'RS256', kid: key(signing).kid } },
          };
        },
      },
    },
    async extraTokenClaims(ctx, token) {
      if (token.kind === 'ClientCredentials') {
        const client = await ctx.oidc.provider.Client.find(token.clientId);
        return client?.ods_code ? { ods_code: client.ods_code } : undefined;
      }
      const user = token.accountId && USERS[token.accountId];
      if (user) {
        return {
          name: user.name,
          // Set by the user grant below; extraTokenClaims' result replaces token.extra.
          selected_roleid: token.extra?.selected_roleid,
          nhsid_nrbac_roles: user.roles,
        };
      }
      return undefined;
    },
    async findAccount(ctx, id) {
      return USERS[id] ? { accountId: id, claims: async () => ({ sub: id }) } : undefined;
    },
  });

  // Stands in for the portal's interactive CIS2 login: the account and its selected role arrive
  // as parameters. Only this test client may use it.
  provider.registerGrantType(
    USER_GRANT,
    async (ctx) => {
      const { account, role } = ctx.oidc.params;
      const user = USERS[account];
      if (!user) throw new errors.InvalidGrant('unknown account');
      if (!user.roles.some((r) => r.person_roleid === role)) {
        throw new errors.InvalidGrant('the account does not hold that role');
      }
      const { client } = ctx.oidc;
      const grant = new ctx.oidc.provider.Grant({ accountId: account, clientId: client.clientId });
      grant.addResourceScope(SHCR, 'user/*.rs');
      const grantId = await grant.save();
      const token = new ctx.oidc.provider.AccessToken({
        accountId: account,
        client,
        grantId,
        gty: USER_GRANT,
        scope: 'user/*.rs',
      });
      token.resourceServer = shcrResourceServer();
      token.extra = { selected_roleid: role };
      const value = await token.save();
      ctx.body = {
        access_token: value,
        token_type: 'Bearer',
        expires_in: token.expiration,
        scope: token.scope,
      };
    },
    ['account', 'role'],
  );
  provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));
  return provider;
}

// shcr as a resource server, shaped like the ones resource indicators resolve to (oidc-provider
// reads these fields and identifier() when it formats a JWT access token).
function shcrResourceServer() {
  return {
    audience: 'shcr',
    scope: 'user/*.rs',
    accessTokenFormat: 'jwt',
    accessTokenTTL: 300,
    jwt: { sign: { alg: 'RS256', kid: key(signing).kid } },
    identifier: () => SHCR,
    get scopes() {
      return new Set(this.scope.split(' '));
    },
  };
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
}

let provider;
let callback;
const server = createServer(async (req, res) => {
  if (req.method === 'POST' && req.url === '/_test/keys') {
    try {
      const body = await readJson(req);
      if (!Array.isArray(body.keys) || !body.keys.includes(body.sign)) {
        throw new Error('keys must be a list that includes sign');
      }
      published = body.keys;
      signing = body.sign;
      provider = buildProvider(provider.issuer);
      callback = provider.callback();
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ published: published.map((n) => key(n).kid), signing: key(signing).kid }));
    } catch (e) {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: String(e.message || e) }));
    }
    return;
  }
  callback(req, res);
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  published = ['a'];
  signing = 'a';
  provider = buildProvider(issuer);
  callback = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
process.stdin.on('close', () => process.exit(0));
