-- meshgate's native decision (gateway.enforcement: native | auto; docs/native.md).
--
-- meshgate's xds prepends `local P = {...}`: the policy compiled into lookup tables by
-- meshgate/xds/_native.py. This script is the decision of meshgate/extauthz/core.py, in the same order,
-- with the same codes, statuses and bodies, for the requests it can decide without Python: a JWT bearer
-- (verified before this filter by Envoy's jwt_authn, whose result it reads from the dynamic metadata) on
-- a path that names its target (KServe v2 REST, server-level calls, anything else: model_unresolved).
-- In auto mode everything else (an API key, a model named in an OpenAI or gRPC body, OpenAI's model
-- list) is left to ext_authz: this filter then sets nothing and ext_authz runs (its filter is enabled
-- unless this one marked the request decided). In native mode there is no ext_authz: a request this
-- script does not mark allowed is refused by the RBAC guard after it (fail closed, even if it errs).

local JWT = "envoy.filters.http.jwt_authn"
local NS = P.namespace
local REALM = "meshgate"

-- --- small pure helpers --------------------------------------------------------------------------

local B64 = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, 64 do B64[alphabet:byte(i)] = i - 1 end
end

local function b64url(s)  -- the decoded bytes (padding allowed), or nil
  local out, bits, n = {}, 0, 0
  local stop = #s
  while stop > 0 and s:byte(stop) == 61 do stop = stop - 1 end  -- '='
  for i = 1, stop do
    local v = B64[s:byte(i)]
    if v == nil then return nil end
    bits = bits * 64 + v
    n = n + 6
    if n >= 8 then
      n = n - 8
      local byte = math.floor(bits / 2 ^ n)
      out[#out + 1] = string.char(byte)
      bits = bits - byte * 2 ^ n
    end
  end
  return table.concat(out)
end

local ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f', ['\n'] = '\\n', ['\r'] = '\\r',
  ['\t'] = '\\t' }

local function utf8_at(s, i)  -- code point and length of the UTF-8 sequence at i, or nil
  local c = s:byte(i)
  local len, cp
  if c >= 0xF0 and c < 0xF8 then len, cp = 4, c - 0xF0
  elseif c >= 0xE0 then len, cp = 3, c - 0xE0
  elseif c >= 0xC0 then len, cp = 2, c - 0xC0
  else return nil end
  if i + len - 1 > #s then return nil end
  for j = i + 1, i + len - 1 do
    local b = s:byte(j)
    if b < 0x80 or b > 0xBF then return nil end
    cp = cp * 64 + (b - 0x80)
  end
  return cp, len
end

local function json_string(s)  -- as Python's json.dumps writes it (ensure_ascii)
  local out, i = { '"' }, 1
  while i <= #s do
    local c = s:byte(i)
    if c < 0x80 then
      local ch = string.char(c)
      if ESC[ch] then out[#out + 1] = ESC[ch]
      elseif c < 0x20 then out[#out + 1] = string.format("\\u%04x", c)
      else out[#out + 1] = ch end
      i = i + 1
    else
      local cp, len = utf8_at(s, i)
      if cp == nil then cp, len = 0xFFFD, 1 end
      if cp >= 0x10000 then
        cp = cp - 0x10000
        out[#out + 1] = string.format("\\u%04x\\u%04x", 0xD800 + math.floor(cp / 1024), 0xDC00 + cp % 1024)
      else
        out[#out + 1] = string.format("\\u%04x", cp)
      end
      i = i + len
    end
  end
  out[#out + 1] = '"'
  return table.concat(out)
end

local function clip(s)  -- meshgate.clip.clip: at most P.clip bytes (whole characters) + "..."
  if #s <= P.clip then return s end
  local cut = P.clip
  while cut > 0 and s:byte(cut + 1) ~= nil and s:byte(cut + 1) >= 0x80 and s:byte(cut + 1) < 0xC0 do
    cut = cut - 1
  end
  return s:sub(1, cut) .. "..."
end

local function repr(s)  -- Python's repr() of a str, for the strings messages quote
  local quote = "'"
  if s:find("'", 1, true) and not s:find('"', 1, true) then quote = '"' end
  local out = { quote }
  for i = 1, #s do
    local c = s:byte(i)
    local ch = string.char(c)
    if ch == "\\" then out[#out + 1] = "\\\\"
    elseif ch == quote then out[#out + 1] = "\\" .. quote
    elseif ch == "\n" then out[#out + 1] = "\\n"
    elseif ch == "\r" then out[#out + 1] = "\\r"
    elseif ch == "\t" then out[#out + 1] = "\\t"
    elseif c < 0x20 or c == 0x7f then out[#out + 1] = string.format("\\x%02x", c)
    else out[#out + 1] = ch end
  end
  out[#out + 1] = quote
  return table.concat(out)
end

local function pystr(v)  -- Python's str() of a JSON value (a message quotes a claim that is not a string)
  local t = type(v)
  if t == "string" then return v end
  if t == "boolean" then return v and "True" or "False" end
  if t == "number" then
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
    for digits = 1, 17 do  -- the shortest that reads back, as Python's repr of a float
      local text = string.format("%." .. digits .. "g", v)
      if tonumber(text) == v then return text end
    end
  end
  if t ~= "table" then return "None" end
  local out = {}
  local function item(x) return type(x) == "string" and repr(x) or pystr(x) end
  if #v > 0 or next(v) == nil then
    for _, x in ipairs(v) do out[#out + 1] = item(x) end
    return "[" .. table.concat(out, ", ") .. "]"
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys)  -- (Python keeps the token's order: an object claim may read in another order)
  for _, k in ipairs(keys) do out[#out + 1] = repr(k) .. ": " .. item(v[k]) end
  return "{" .. table.concat(out, ", ") .. "}"
end

local function chars(s)  -- number of UTF-8 characters
  local _, n = s:gsub("[^\128-\191]", "")
  return n
end

local function unprintable(cp)  -- P.unprintable: sorted [first, last] pairs, Python's non-printable code points
  local r = P.unprintable
  local lo, hi = 1, #r / 2
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    if cp < r[2 * mid - 1] then hi = mid - 1
    elseif cp > r[2 * mid] then lo = mid + 1
    else return true end
  end
  return false
end

local function printable(s)  -- Python's str.isprintable(), as extauthz checks the user
  if s:find("[%c\127]") then return false end
  local i = s:find("[\128-\255]")
  while i ~= nil and i <= #s do
    if s:byte(i) < 0x80 then
      i = i + 1
    else
      local cp, len = utf8_at(s, i)
      if cp == nil or unprintable(cp) then return false end
      i = i + len
    end
  end
  return true
end

local function claim(claims, name)  -- meshgate.extauthz.core._claim: a key, else a dotted path
  if claims[name] ~= nil then return claims[name] end
  local value = claims
  for part in name:gmatch("[^.]+") do
    if type(value) ~= "table" or value[part] == nil then return nil end
    value = value[part]
  end
  return value
end

local function peek(token)  -- header and payload JSON text of a compact JWT, unverified, or nil
  local h, p = token:match("^([%w_-]+=?=?)%.([%w_-]+=?=?)%.[%w_-]*=?=?$")
  if h == nil then return nil end
  local header, payload = b64url(h), b64url(p)
  if header == nil or payload == nil or not header:match("^%s*{") or not payload:match("^%s*{") then
    return nil
  end
  return header, payload
end

local function field(json, name)  -- a string member of a small JSON object, read by pattern
  return json:match('"' .. name .. '"%s*:%s*"([^"\\]*)"')
end

local function has(json, name)
  return json:find('"' .. name .. '"%s*:') ~= nil
end

-- --- answers -------------------------------------------------------------------------------------

local Deny = {}
Deny.__index = Deny

local function deny(code, message)
  return setmetatable({ code = code, message = message }, Deny)
end

local function is_openai(path)
  for _, prefix in ipairs(P.openai_prefixes) do
    if path:sub(1, #prefix) == prefix then return true end
  end
  return false
end

local function www_authenticate(code)
  if code == "missing_credentials" then return 'Bearer realm="' .. REALM .. '"' end
  local error = "invalid_token"
  if code == "ambiguous_credentials" or code == "unsupported_auth_scheme" then error = "invalid_request" end
  return 'Bearer realm="' .. REALM .. '", error="' .. error .. '", error_description="' .. code .. '"'
end

local function refuse(handle, d, path, decision_id)
  local status = P.codes[d.code]
  local body
  if is_openai(path) then
    body = '{"error": {"message": ' .. json_string(d.message) .. ', "type": "' .. P.openai_types[status]
      .. '", "param": null, "code": "' .. d.code .. '"}}'
  else
    body = '{"error": "' .. d.code .. '", "message": ' .. json_string(d.message) .. '}'
  end
  local headers = { [":status"] = tostring(status), ["content-type"] = "application/json" }
  if status == 401 then headers["www-authenticate"] = www_authenticate(d.code) end
  headers[P.decision_id_header] = decision_id
  handle:respond(headers, body)
end

-- --- the decision ----------------------------------------------------------------------------------

local function token_failure(token, failed)
  -- what meshgate.extauthz.tokens would say of a token jwt_authn refused; the order is theirs
  if not token:match("^[%w_-]+=?=?%.[%w_-]+=?=?%.[%w_-]*=?=?$") then
    return deny("token_malformed", "token is not a well-formed JWT: " .. P.not_compact)
  end
  local header, payload = peek(token)
  local status = nil
  for _, found in pairs(failed) do status = found end  -- (every issuer's status reads alike on these)
  local unreadable = status and type(status.message) == "string"
    and (status.message:find("invalid JSON", 1, true) or status.message:find("Base64", 1, true))
  if header == nil or unreadable then
    return deny("token_malformed", "token is not a well-formed JWT: " .. P.not_json_objects)
  end
  local alg = field(header, "alg")
  if alg == nil or not P.algorithms[alg] then
    return deny("token_alg_not_allowed", "algorithm " .. (alg and repr(clip(alg)) or "None") .. " is not accepted")
  end
  local issuer = P.issuers[field(payload, "iss") or ""]
  if issuer == nil then return deny("token_unknown_issuer", "token issuer is not trusted") end
  if not issuer.algs[alg] then
    return deny("token_alg_not_allowed", "algorithm " .. alg .. " is not allowed for issuer " .. issuer.name)
  end
  local kid = field(header, "kid")
  local fits = issuer.fits[alg]
  if fits ~= nil then  -- inline keys: meshgate.extauthz.keys.KeySet.candidates, compiled
    if (kid == nil and not fits.any) or (kid ~= nil and not fits.kids[kid] and not fits.kidless) then
      if kid ~= nil and not issuer.kids[kid] then
        return deny("token_unknown_kid", "no key " .. repr(kid:sub(1, 64)) .. " for issuer " .. issuer.name)
      end
      return deny("token_unknown_kid", "no key of issuer " .. issuer.name .. " fits algorithm " .. alg)
    end
  end
  status = failed[issuer.failed]
  local code = status and status.code or 0
  if code == 32 then
    if kid ~= nil and not issuer.kids[kid] then
      return deny("token_unknown_kid", "no key " .. repr(kid:sub(1, 64)) .. " for issuer " .. issuer.name)
    end
    return deny("token_unknown_kid", "no key of issuer " .. issuer.name .. " fits algorithm " .. alg)
  elseif code == 26 and not has(payload, "exp") then
    return deny("token_missing_claim", 'Token is missing the "exp" claim')
  elseif code == 26 then
    return deny("token_invalid_signature", "token signature does not verify")
  elseif code == 25 and not has(payload, "aud") then
    return deny("token_missing_claim", 'Token is missing the "aud" claim')
  elseif code == 25 then
    return deny("token_wrong_audience", "token audience is not accepted")
  elseif code == 3 then
    return deny("token_expired", "token has expired")
  elseif code == 2 then
    return deny("token_not_yet_valid", "token is not valid yet (nbf or iat in the future)")
  elseif code == 24 then
    return deny("token_unknown_issuer", "token issuer is not trusted")
  elseif code >= 4 and code <= 23 then
    return deny("token_malformed", "token is not a well-formed JWT")
  end
  return deny("token_invalid", "token is not valid: " .. tostring(status and status.message or "unverified"))
end

local function identity(handle, token)
  if #token > P.max_token_bytes then
    return deny("token_too_large", "token is larger than " .. P.max_token_bytes .. " bytes")
  end
  local verified = handle:streamInfo():dynamicMetadata():get(JWT) or {}
  local claims, header = verified.payload, verified.header
  if claims == nil then return token_failure(token, verified) end
  local issuer = P.issuers[claims.iss or ""]
  if issuer == nil then return deny("token_unknown_issuer", "token issuer is not trusted") end
  if not issuer.pinned then  -- (pinned: its keys verify only its algorithms, and no header is written)
    if header == nil then return token_failure(token, verified) end
    local alg = header.alg
    if not issuer.algs[alg or ""] then
      return deny("token_alg_not_allowed", "algorithm " .. tostring(alg) .. " is not allowed for issuer " .. issuer.name)
    end
  end
  if type(claims.iat) == "number" and claims.iat > os.time() + issuer.leeway then
    return deny("token_not_yet_valid", "token is not valid yet (nbf or iat in the future)")
  end
  local names = issuer.claims
  local tenant, user = claim(claims, names.tenant), claim(claims, names.user)
  if type(tenant) ~= "string" or tenant == "" then
    return deny("token_missing_claim", "token has no " .. repr(names.tenant) .. " claim")
  end
  if type(user) ~= "string" or user == "" then
    return deny("token_missing_claim", "token has no " .. repr(names.user) .. " claim")
  end
  if chars(user) > P.max_user_chars or not printable(user) then
    return deny("token_invalid", "the " .. repr(names.user) .. " claim is not a printable string")
  end
  local raw, roles = claim(claims, names.roles), {}
  if type(raw) == "string" then
    for role in raw:gmatch("%S+") do roles[#roles + 1] = role end
  elseif type(raw) == "table" then
    for _, role in ipairs(raw) do
      if type(role) == "string" then roles[#roles + 1] = role end
    end
  end
  local record = P.tenants[tenant]
  if record == nil then return deny("unknown_tenant", "tenant " .. repr(clip(tenant)) .. " is not known") end
  local tier = record.tier
  if names.tier ~= nil and claim(claims, names.tier) ~= nil then
    tier = claim(claims, names.tier)
    if type(tier) ~= "string" or not P.tiers[tier] then
      local shown = pystr(tier)
      return deny("unknown_tier", "tier " .. repr(clip(shown)) .. " is not known")
    end
  end
  return { tenant = tenant, user = user, tier = tier, roles = roles, record = record }
end

local function target(path)  -- meshgate.extauthz.target._path_target
  local model, rest = path:match("^/v2/models/([^/]+)(.*)$")
  if model ~= nil then
    return { kind = "model", model = model, version = rest:match("^/versions/([^/]+)") or "" }
  end
  if P.server_paths[path] then return { kind = "server", model = "", version = "" } end
  for _, list in ipairs(P.model_lists) do
    if path == list then return { kind = "models", model = "", version = "" } end
    if path:sub(1, #list + 1) == list .. "/" and #path > #list + 1 then
      return { kind = "models", model = path:sub(#list + 2), version = "" }
    end
  end
  return nil
end

local function authorize(who, aim, headers)
  local origin = headers:get("origin")
  local browser = origin ~= nil or headers:get("sec-fetch-site") ~= nil
  if who.record.origins and browser and not who.record.origins[origin or ""] then
    return deny("origin_forbidden", "browser calls for tenant " .. who.tenant .. " only from its allowed origins")
  end
  if aim.kind == "server" then return nil end
  if aim.kind == "models" then  -- a native policy has no OpenAI model: the list is empty
    if aim.model == "" then return "listing" end
    return deny("model_not_found", "The model " .. repr(clip(aim.model)) .. " does not exist or you do not have access to it.")
  end
  local model = P.models[aim.model]
  if model == nil or (model.owner and model.owner ~= who.tenant) then
    return deny("model_forbidden", "model " .. repr(clip(aim.model)) .. " is not available to tenant " .. who.tenant)
  end
  local granted = nil
  for _, role in ipairs(who.roles) do
    local versions = model.grants[role]
    if versions ~= nil then
      granted = granted or {}
      for v in pairs(versions) do granted[v] = true end
    end
  end
  if granted == nil then
    return deny("role_forbidden", "no role of the caller may invoke " .. aim.model)
  end
  if aim.version ~= "" and (not model.versions[aim.version] or not granted[aim.version]) then
    return deny("version_forbidden", "version " .. repr(clip(aim.version)) .. " of " .. aim.model .. " is not available to the caller")
  end
  return nil
end

local function delegated(path)  -- auto: a request whose target is in its body, or OpenAI's model list
  for _, prefix in ipairs(P.delegate_prefixes) do
    if path:sub(1, #prefix) == prefix then return true end
  end
  return false
end

local function decide(handle, headers, path)
  local authorization, key = headers:get("authorization"), headers:get(P.api_key_header)
  if authorization ~= nil and key ~= nil then
    return deny("ambiguous_credentials", "send either a bearer token or an API key, not both")
  end
  if key ~= nil then
    if P.auto then return "delegate" end
    return deny("invalid_api_key", "API key is not valid")
  end
  if authorization == nil then return deny("missing_credentials", "a bearer token or an API key is required") end
  local scheme, token = authorization:match("^%s*(%S+)%s*(.-)%s*$")
  if scheme == nil or scheme:lower() ~= "bearer" or token == "" then
    return deny("unsupported_auth_scheme", "Authorization must be 'Bearer <token>'")
  end
  if not token:find(".", 1, true) then  -- an API key, as OpenAI's clients send it
    if P.auto then return "delegate" end
    return deny("invalid_api_key", "API key is not valid")
  end
  if P.auto and (scheme ~= "Bearer" or authorization ~= "Bearer " .. token) then
    return "delegate"  -- a spelling jwt_authn does not read: ext_authz verifies it
  end
  local who = identity(handle, token)
  if getmetatable(who) == Deny then return who end
  local aim = target(path)
  if aim == nil then
    return deny("model_unresolved", "no model can be read from " .. clip(headers:get(":method") or "") .. " " .. clip(path))
  end
  local refused = authorize(who, aim, headers)
  if refused ~= nil then return refused end
  return { who = who, aim = aim }
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = (headers:get(":path") or ""):match("^[^?]*")
  if P.auto and delegated(path) then return end
  local decision_id = headers:get("x-request-id") or ""
  local result = decide(handle, headers, path)
  if result == "delegate" then return end
  if getmetatable(result) == Deny then return refuse(handle, result, path, decision_id) end
  local metadata = handle:streamInfo():dynamicMetadata()
  if result == "listing" then
    metadata:set(NS, "decided", true)
    return handle:respond({ [":status"] = "200", ["content-type"] = "application/json",
      [P.decision_id_header] = decision_id }, '{"object": "list", "data": []}')
  end
  local who, aim = result.who, result.aim
  headers:replace(P.headers.tenant, who.tenant)
  headers:replace(P.headers.user, who.user)
  headers:replace(P.headers.tier, who.tier)
  if aim.model ~= "" then headers:replace(P.headers.model, aim.model) end
  if aim.version ~= "" then headers:replace(P.headers.version, aim.version) end
  headers:replace(P.decision_id_header, decision_id)
  if not P.forward_authorization then headers:remove("authorization") end
  headers:remove(P.bearer_header)  -- (jwt_authn's copy of it, cut: _fast.py)
  metadata:set(NS, "decided", true)  -- (what follows reads the identity from the headers above)
  handle:clearRouteCache()
end
