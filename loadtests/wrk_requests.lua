-- Replays pre-signed deliveries, one per request, each thread its own slice of the file.
-- Lines: "<Stripe-Signature>\t<body>". Path from the environment-free argument list.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local total = tonumber(args[2])
  lines = {}
  local index = 0
  for line in io.lines(path) do
    if index % total == id then
      local tab = string.find(line, "\t", 1, true)
      table.insert(lines, { string.sub(line, 1, tab - 1), string.sub(line, tab + 1) })
    end
    index = index + 1
  end
  position = 0
end

function request()
  position = position + 1
  local item = lines[((position - 1) % #lines) + 1]
  return wrk.format("POST", wrk.path, {
    ["Content-Type"] = "application/json",
    ["Stripe-Signature"] = item[1],
  }, item[2])
end
