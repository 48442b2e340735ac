# A reference upstream for tests/differential.rs: the parser stack QuickBlox runs (Rack under
# Puma, behind Rack::MethodOverride as in Rails), answering as JSON what it read.
#
# It emulates how Rails builds `params` (ActionDispatch::Request): body parameters merged with
# query parameters, the query winning on a shared key (`request_parameters.merge(query_parameters)`);
# body parameters from the JSON body for Rails' JSON media types (`application/json`,
# `text/x-json`, `application/jsonrequest`; a non-object becomes `{"_json" => value}`), else Rack's
# `req.POST`. Rails' deep_munge (ActionDispatch::Request::Utils::NoNilParamEncoder) is emulated:
# nils are removed from every array, at any depth; and a string that is not valid UTF-8 makes
# Rails answer 400 (check_param_encoding), reported here as `params_error`. Not emulated: path
# parameters (`id`, `format`) that Rails merges over both, and ActiveSupport's time parsing.
#
# It also answers the gateway's lookups: a dialog (`GET /chat/Dialog.json?_id=<id>`) is a GROUP
# (type 2) owned by user 101 with occupants 101..103; messages (`GET /chat/Message.json` with
# `_id` or `_id[in]`) are in the dialog asked for, sent by 101, but an id starting with `other`
# by 102; an event (`GET /events/<n>.json`) is 101's when n is 1, else 102's; a user's blobs
# (`GET /blobs.json`) are 1 and 2; his subscriptions (`GET /subscriptions.json` without a request
# id) are 1 and 2. And `GET /__differential/seen` (sent straight to Puma, not through the gateway)
# with every X-Request-Id it has been sent.

require "json"
require "rack"

SEEN = []
SEEN_LOCK = Mutex.new

# Rails' JSON parameter parser serves these (Mime::Type json and its synonyms).
JSON_TYPES = %w[application/json text/x-json application/jsonrequest].freeze

def deep_munge(value)
  case value
  when Array then value.map { |e| deep_munge(e) }.compact
  when Hash
    if value.key?(:tempfile)
      # A file part: its name and content, not the Tempfile.
      { "filename" => value[:filename], "content" => value[:tempfile].read }
    else
      value.each_with_object({}) { |(k, v), h| h[k.to_s] = deep_munge(v) }
    end
  else value
  end
end

def check_encoding(value)
  case value
  when Array then value.each { |e| check_encoding(e) }
  when Hash then value.each { |k, v| check_encoding(k); check_encoding(v) }
  when String
    raise ArgumentError, "Non UTF-8 value: #{value.inspect}" unless value.dup.force_encoding(Encoding::UTF_8).valid_encoding?
  end
end

# The body parameters as Rails reads them (ActionDispatch::Request#POST).
def body_params(req, env)
  type = env["CONTENT_TYPE"].to_s[/\A([^,;]*)/, 1].to_s.strip.downcase
  if req.content_length.to_i > 0 && JSON_TYPES.include?(type)
    input = env["rack.input"]
    input.rewind
    raw = input.read(req.content_length.to_i)
    input.rewind
    data = JSON.parse(raw)
    data.is_a?(Hash) ? data : { "_json" => data }
  else
    req.POST || {}
  end
end

def rails_path(path)
  path = "/#{path}".squeeze("/")
  return path if path == "/"
  path.delete_suffix("/").gsub(/(%[a-f0-9]{2})/) { Regexp.last_match(1).upcase }
end

def rails_route(method, path_info)
  path = rails_path(path_info.to_s.b)
  if path.match?(%r{\A/chat/Dialog/[^/.?]+(?:\.[^/.?]+)?\z}n)
    { "PUT" => "update", "PATCH" => "update", "DELETE" => "delete" }[method]
  elsif path.match?(%r{\A/chat/Dialog(?:\.[^/.?]+)?\z}n)
    method == "POST" ? "create" : nil
  end
end

def reading(env)
  req = Rack::Request.new(env)
  out = {
    "rack" => true,
    "method" => env["REQUEST_METHOD"],
    "original_method" => env["rack.methodoverride.original_method"],
    "path_info" => env["PATH_INFO"].to_s.dup.force_encoding(Encoding::UTF_8).scrub,
    "query_string" => env["QUERY_STRING"].to_s.dup.force_encoding(Encoding::UTF_8).scrub,
    "rails_route" => rails_route(env["REQUEST_METHOD"], env["PATH_INFO"]),
  }
  begin
    body = body_params(req, env)
    query = req.GET
    check_encoding(body)
    check_encoding(query)
    out["params"] = deep_munge(body).merge(deep_munge(query))
  rescue StandardError => e
    out["params"] = nil
    out["params_error"] = "#{e.class}: #{e.message}".scrub
  end
  env_out = {}
  env.each do |k, v|
    next unless k.start_with?("HTTP_") || k == "CONTENT_TYPE" || k == "CONTENT_LENGTH"
    env_out[k] = v.to_s.dup.force_encoding(Encoding::UTF_8).scrub
  end
  out["env"] = env_out
  out
end

App = lambda do |env|
  if env["PATH_INFO"] == "/__differential/seen"
    ids = SEEN_LOCK.synchronize { SEEN.dup }
    next [200, { "Content-Type" => "application/json" }, [JSON.generate("seen" => ids)]]
  end
  SEEN_LOCK.synchronize do
    SEEN << { "id" => env["HTTP_X_REQUEST_ID"], "method" => env["REQUEST_METHOD"],
              "path" => env["PATH_INFO"], "query" => env["QUERY_STRING"] }
  end
  out = reading(env)
  if env["REQUEST_METHOD"] == "GET" && env["PATH_INFO"] == "/chat/Dialog.json" &&
     out["params"].is_a?(Hash) && out["params"]["_id"].is_a?(String)
    id = out["params"]["_id"]
    out["items"] = [{ "_id" => id, "type" => 2, "user_id" => 101,
                      "occupants_ids" => [101, 102, 103], "admin_ids" => [] }]
    out["limit"] = 100
    out["skip"] = 0
    out["total_entries"] = 1
  end
  params = out["params"].is_a?(Hash) ? out["params"] : {}
  get = env["REQUEST_METHOD"] == "GET"
  if get && env["PATH_INFO"] == "/chat/Message.json" && params["chat_dialog_id"].is_a?(String)
    ids = params["_id"].is_a?(String) ? [params["_id"]] : []
    ids = params["_id"]["in"].to_s.split(",") if params["_id"].is_a?(Hash)
    out["items"] = ids.map do |id|
      { "_id" => id, "chat_dialog_id" => params["chat_dialog_id"],
        "sender_id" => id.start_with?("other") ? 102 : 101 }
    end
  end
  if get && (m = env["PATH_INFO"].match(%r{\A/events/(\d+)\.json\z}))
    out["event"] = { "id" => m[1].to_i, "user_id" => m[1] == "1" ? 101 : 102 }
  end
  if get && env["PATH_INFO"] == "/blobs.json"
    out["items"] = [{ "blob" => { "id" => 1 } }, { "blob" => { "id" => 2 } }]
    out["total_entries"] = 2
  end
  if get && env["PATH_INFO"] == "/subscriptions.json" && env["HTTP_X_REQUEST_ID"].nil?
    out = [{ "subscription" => { "id" => 1 } }, { "subscription" => { "id" => 2 } }]
  end
  body = JSON.generate(out)
  [200, { "Content-Type" => "application/json", "Content-Length" => body.bytesize.to_s }, [body]]
end

use Rack::MethodOverride
run App
