// loractl adapters ...: list, get, load, upload, delete, merge, unmerge,
// combine, save, export, unload-all.
#include <algorithm>
#include <cstdio>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/loractl/commands.h"
#include "client/loractl/flags.h"

namespace loraserve::loractl {
namespace {

// ---- Reports
// ----------------------------------------------------------------------------------

Json AdapterJson(const loraserve::AdapterInfo& a) {
  Json j;
  j["name"] = a.name;
  j["state"] = loraserve::AdapterStateName(a.state);
  j["residency"] = loraserve::ResidencyName(a.residency);
  j["source"] = loraserve::AdapterSourceName(a.source);
  j["path"] = a.path;
  j["checksum"] = a.checksum;
  j["bytes"] = a.bytes;
  j["max_rank"] = a.max_rank;
  j["ranks"] = a.ranks;
  j["target_modules"] = a.target_modules;
  j["dora"] = a.dora;
  j["has_head"] = a.has_head;
  j["base_model_name_or_path"] = a.base_model_name_or_path;
  j["base_model_match"] = loraserve::BaseModelMatchName(a.base_model_match);
  j["warnings"] = a.warnings;
  j["uses"] = a.uses;
  return j;
}

// "8: self_attn.q_proj, self_attn.v_proj in layers 0-3": module names with the
// "...layers.N." prefix folded (the full list is in --json).
std::string ModulesSummary(const std::vector<std::string>& modules) {
  std::vector<std::string> kinds;
  std::set<int> layers;
  for (const auto& m : modules) {
    std::string kind = m;
    const size_t at = m.find("layers.");
    if (at != std::string::npos && (at == 0 || m[at - 1] == '.')) {
      const size_t digits = at + 7;
      const size_t dot = m.find('.', digits);
      int layer;
      if (dot != std::string::npos && absl::SimpleAtoi(m.substr(digits, dot - digits), &layer)) {
        layers.insert(layer);
        kind = m.substr(dot + 1);
      }
    }
    if (std::find(kinds.begin(), kinds.end(), kind) == kinds.end()) kinds.push_back(kind);
  }
  std::string out = absl::StrCat(modules.size());
  if (!kinds.empty()) absl::StrAppend(&out, ": ", absl::StrJoin(kinds, ", "));
  if (!layers.empty()) {
    const bool contiguous =
        *layers.rbegin() - *layers.begin() + 1 == static_cast<int>(layers.size());
    absl::StrAppend(&out, " in layer", layers.size() == 1 ? " " : "s ",
                    contiguous && layers.size() > 1
                        ? absl::StrCat(*layers.begin(), "-", *layers.rbegin())
                        : absl::StrJoin(layers, ","));
  }
  return out;
}

void PrintAdapterFields(const loraserve::AdapterInfo& a) {
  std::vector<std::pair<std::string, std::string>> f = {
      {"name", a.name},
      {"state", loraserve::AdapterStateName(a.state)},
      {"residency", loraserve::ResidencyName(a.residency)},
      {"source", loraserve::AdapterSourceName(a.source)},
  };
  if (!a.path.empty()) f.emplace_back("path", a.path);
  f.emplace_back("checksum", a.checksum.empty() ? "-" : a.checksum);
  f.emplace_back("bytes", absl::StrCat(a.bytes, " (", FormatBytes(a.bytes), ")"));
  f.emplace_back("max_rank", absl::StrCat(a.max_rank));
  // Ranks per module, shown once per distinct value ("4 x 8, 8 x 2").
  std::map<int64_t, int> rank_counts;
  for (int64_t r : a.ranks) ++rank_counts[r];
  std::vector<std::string> ranks;
  for (const auto& [rank, count] : rank_counts) ranks.push_back(absl::StrCat(rank, " x ", count));
  f.emplace_back("ranks", ranks.empty() ? "-" : absl::StrJoin(ranks, ", "));
  f.emplace_back("target_modules", ModulesSummary(a.target_modules));
  f.emplace_back("dora", a.dora ? "yes" : "no");
  f.emplace_back("head", a.has_head ? "yes" : "no");
  f.emplace_back("base_model",
                 absl::StrCat(a.base_model_name_or_path.empty() ? "-" : a.base_model_name_or_path,
                              " (", loraserve::BaseModelMatchName(a.base_model_match), ")"));
  f.emplace_back("uses", absl::StrCat(a.uses));
  for (const auto& w : a.warnings) f.emplace_back("warning", w);
  PrintFields(f);
}

// One line about an adapter: "ready, resident, rank 8, 28.0 KiB, 8 modules,
// checksum dd8995ef263e".
std::string AdapterSummary(const loraserve::AdapterInfo& a) {
  std::string out = absl::StrCat(loraserve::AdapterStateName(a.state), ", ",
                                 loraserve::ResidencyName(a.residency), ", rank ", a.max_rank, ", ",
                                 FormatBytes(a.bytes), ", ", a.target_modules.size(), " modules");
  if (!a.checksum.empty()) absl::StrAppend(&out, ", checksum ", a.checksum.substr(0, 12));
  return out;
}

// The result of a command that returns one adapter: with --json {"adapter":
// {...}} plus `extra`; otherwise `headline` and the adapter's summary on one
// line, or (no headline) its fields.
int ReportAdapter(Context& ctx, const loraserve::AdapterInfo& a, const std::string& headline,
                  Json extra = Json::object()) {
  if (ctx.json()) {
    extra["adapter"] = AdapterJson(a);
    ctx.Emit(extra);
  } else if (!headline.empty()) {
    std::printf("%s: %s\n", headline.c_str(), AdapterSummary(a).c_str());
  } else {
    PrintAdapterFields(a);
  }
  return 0;
}

// The result of load / upload: `verb` ("loaded") unless the same files were
// loaded already.
int ReportLoaded(Context& ctx, const loraserve::AdapterInfo& a, const std::string& name,
                 const std::string& verb) {
  return ReportAdapter(ctx, a,
                       a.already_loaded ? absl::StrCat(name, " was already loaded (same checksum)")
                                        : absl::StrCat(verb, " ", name),
                       {{"already_loaded", a.already_loaded}});
}

// The result of save / export: the files written.
int ReportFiles(Context& ctx, const std::string& headline, const std::string& dir,
                const std::vector<loraserve::TransferredFile>& files, Json extra) {
  int64_t total = 0;
  for (const auto& f : files) total += f.size;
  if (ctx.json()) {
    Json list = Json::array();
    for (const auto& f : files) {
      list.push_back({{"path", f.path}, {"size", f.size}, {"sha256", f.sha256}});
    }
    Json doc = {{"dir", dir}, {"files", list}, {"total_bytes", total}};
    doc.update(extra);
    ctx.Emit(doc);
    return 0;
  }
  std::printf("%s: %zu files, %s\n", headline.c_str(), files.size(), FormatBytes(total).c_str());
  std::vector<std::vector<std::string>> rows = {{"FILE", "BYTES", "SHA256"}};
  for (const auto& f : files) rows.push_back({f.path, absl::StrCat(f.size), f.sha256});
  PrintTable(rows, {1});
  return 0;
}

// ---- The commands
// -----------------------------------------------------------------------------

int RunList(Context& ctx) {
  auto all = ctx.client().ListAdapters(ctx.call());
  if (!all.ok()) return ctx.Fail(all.status());
  if (ctx.json()) {
    Json list = Json::array();
    for (const auto& a : *all) list.push_back(AdapterJson(a));
    ctx.Emit({{"adapters", list}});
    return 0;
  }
  if (all->empty()) {
    std::printf("no adapters\n");
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"NAME", "STATE", "RESIDENCY", "SOURCE", "RANK", "BYTES", "MODULES", "CHECKSUM"}};
  for (const auto& a : *all) {
    rows.push_back({a.name, loraserve::AdapterStateName(a.state),
                    loraserve::ResidencyName(a.residency), loraserve::AdapterSourceName(a.source),
                    absl::StrCat(a.max_rank), FormatBytes(a.bytes),
                    absl::StrCat(a.target_modules.size()),
                    a.checksum.empty() ? "-" : a.checksum.substr(0, 12)});
  }
  PrintTable(rows, {4, 5, 6});
  return 0;
}

int RunGet(Context& ctx, const std::string& name) {
  auto a = ctx.client().GetAdapter(name, ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportAdapter(ctx, *a, "");
}

int RunLoad(Context& ctx, const std::string& name, const std::string& path) {
  auto a = ctx.client().LoadAdapter(name, path, ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportLoaded(ctx, *a, name, "loaded");
}

int RunRegister(Context& ctx, const std::string& name, const std::string& path) {
  auto a = ctx.client().RegisterAdapter(name, path, ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportLoaded(ctx, *a, name, "registered");
}

int RunUpload(Context& ctx, const std::string& name, const std::string& dir) {
  std::unique_ptr<ProgressBar> bar = ctx.Progress("upload " + name);
  auto a = ctx.client().UploadAdapter(name, dir, ctx.call(), Context::Callback(bar.get()));
  if (bar) bar->Finish();
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportLoaded(ctx, *a, name, "uploaded");
}

int RunDelete(Context& ctx, const std::string& name) {
  absl::Status s = ctx.client().DeleteAdapter(name, ctx.call());
  if (!s.ok()) return ctx.Fail(s);
  if (ctx.json()) {
    ctx.Emit({{"deleted", name}});
  } else {
    std::printf("deleted %s\n", name.c_str());
  }
  return 0;
}

int RunMerge(Context& ctx, const std::string& name) {
  auto m = ctx.client().MergeAdapter(name, ctx.call());
  if (!m.ok()) return ctx.Fail(m.status());
  if (ctx.json())
    return ReportAdapter(ctx, m->adapter, "", {{"already_merged", m->already_merged}});
  std::printf("%s %s\n", name.c_str(), m->already_merged ? "was already merged" : "merged");
  return 0;
}

int RunUnmerge(Context& ctx, const std::string& name) {
  auto a = ctx.client().UnmergeAdapter(name, ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  if (ctx.json()) return ReportAdapter(ctx, *a, "");
  std::printf("%s unmerged\n", name.c_str());
  return 0;
}

int RunUnloadAll(Context& ctx) {
  auto n = ctx.client().UnloadAll(ctx.call());
  if (!n.ok()) return ctx.Fail(n.status());
  if (ctx.json()) {
    ctx.Emit({{"deleted", *n}});
  } else {
    std::printf("deleted %d adapter%s\n", *n, *n == 1 ? "" : "s");
  }
  return 0;
}

// `combine`'s arguments: the request with its flags, and the SOURCE[:WEIGHT]
// arguments.
struct CombineArgs {
  loraserve::CombineRequest req;
  std::vector<std::string> sources;
};

int RunCombine(Context& ctx, CombineArgs& args) {
  loraserve::CombineRequest& req = args.req;
  for (const std::string& source : args.sources) {
    // NAME or NAME:WEIGHT (adapter names never contain ':').
    loraserve::WeightedAdapter w;
    const size_t colon = source.rfind(':');
    w.name = source.substr(0, colon);
    if (colon != std::string::npos && !ParseDouble(source.substr(colon + 1), &w.weight)) {
      return ctx.Usage(absl::StrCat("source \"", source, "\" is not NAME:WEIGHT"));
    }
    req.sources.push_back(std::move(w));
  }
  auto a = ctx.client().CombineAdapters(req, ctx.call());
  if (!a.ok()) return ctx.Fail(a.status());
  return ReportAdapter(ctx, *a,
                       absl::StrCat("combined ", req.sources.size(), " adapters into ", req.name,
                                    " (", req.combination_type, ")"));
}

int RunSave(Context& ctx, const std::string& name, const std::string& dir) {
  std::unique_ptr<ProgressBar> bar = ctx.Progress("save " + name);
  auto files = ctx.client().SaveAdapter(name, dir, ctx.call(), Context::Callback(bar.get()));
  if (bar) bar->Finish();
  if (!files.ok()) return ctx.Fail(files.status());
  return ReportFiles(ctx, absl::StrCat("saved ", name, " to ", dir), dir, *files, {{"name", name}});
}

int RunExport(Context& ctx, const std::string& dir, const std::vector<std::string>& adapters) {
  std::unique_ptr<ProgressBar> bar = ctx.Progress("export");
  auto files =
      ctx.client().ExportMergedModel(adapters, dir, ctx.call(), Context::Callback(bar.get()));
  if (bar) bar->Finish();
  if (!files.ok()) return ctx.Fail(files.status());
  const std::string what =
      adapters.empty() ? "the base model" : "base + " + absl::StrJoin(adapters, " + ");
  return ReportFiles(ctx, absl::StrCat("exported ", what, " to ", dir), dir, *files,
                     {{"adapters", adapters}});
}

// ---- The command table
// ------------------------------------------------------------------------

// Adds `adapters NAME_COMMAND NAME`; `run` gets the adapter's name.
void AddNameCommand(CLI::App* group, CommandTable* table, const std::string& command,
                    const std::string& summary, int (*run)(Context& ctx, const std::string& name)) {
  auto name = std::make_shared<std::string>();
  CLI::App* cmd = table->Add(group, command, summary, "",
                             [run, name](Context& ctx) { return run(ctx, *name); });
  cmd->add_option("NAME", *name, "the adapter")->required();
}

// Adds `adapters COMMAND NAME DIR`; `run` gets both. `dir_arg` names the second
// argument.
void AddNameDirCommand(CLI::App* group, CommandTable* table, const std::string& command,
                       const std::string& summary, const std::string& details,
                       const std::string& dir_arg, const std::string& dir_help,
                       int (*run)(Context& ctx, const std::string& name, const std::string& dir)) {
  auto args = std::make_shared<std::pair<std::string, std::string>>();
  CLI::App* cmd = table->Add(group, command, summary, details, [run, args](Context& ctx) {
    return run(ctx, args->first, args->second);
  });
  cmd->add_option("NAME", args->first, "the adapter's name on the server")->required();
  cmd->add_option(dir_arg, args->second, dir_help)->required();
}

void AddCombine(CLI::App* group, CommandTable* table) {
  auto args = std::make_shared<CombineArgs>();
  CLI::App* cmd =
      table->Add(group, "combine", "combine adapters into one (PEFT add_weighted_adapter)",
                 "Each SOURCE is a loaded adapter with an optional weight (default 1; may "
                 "be negative).",
                 [args](Context& ctx) { return RunCombine(ctx, *args); });
  loraserve::CombineRequest& req = args->req;
  cmd->add_option("NAME", req.name, "name of the new adapter")->required();
  cmd->add_option("SOURCE", args->sources, "a loaded adapter and its weight (default 1)")
      ->option_text("[:WEIGHT]")
      ->required();
  AddString(cmd,
            {"type", "TYPE",
             "linear | cat | svd | ties | ties_svd | dare_linear | dare_ties |\n"
             "dare_linear_svd | dare_ties_svd | magnitude_prune | "
             "magnitude_prune_svd\n"
             "(default svd)"},
            &req.combination_type);
  AddInt(cmd, {"svd_rank", "N", "SVD types: rank of the result (default: the largest source rank)"},
         &req.svd_rank, 0, std::numeric_limits<int32_t>::max());
  AddDouble(cmd, {"svd_clamp", "Q", "SVD types: clamp at this quantile in (0, 1) (default: none)"},
            &req.svd_clamp);
  AddDouble(cmd,
            {"density", "D", "ties / dare / magnitude_prune: fraction kept, in (0, 1] (default 1)"},
            &req.density);
  AddString(cmd, {"majority_sign_method", "M", "ties: total | frequency (default total)"},
            &req.majority_sign_method);
  AddUint64(cmd, {"seed", "S", "dare: seed of the random masks (default 0)"}, &req.seed);
}

void AddExport(CLI::App* group, CommandTable* table) {
  auto args = std::make_shared<std::pair<std::string, std::vector<std::string>>>();
  CLI::App* cmd =
      table->Add(group, "export", "write the base model with ADAPTERs merged into DIR",
                 "A Hugging Face checkpoint (config.json, model.safetensors, tokenizer "
                 "files):\n"
                 "PEFT merge_and_unload of the given adapters; none = the base model.",
                 [args](Context& ctx) { return RunExport(ctx, args->first, args->second); });
  cmd->add_option("DIR", args->first, "local directory to write (created if missing)")->required();
  cmd->add_option("ADAPTER", args->second, "loaded adapters to merge, in order");
}

}  // namespace

void AddAdapterCommands(CLI::App* root, CommandTable* table) {
  CLI::App* group =
      AddGroup(root, "adapters", "load, inspect, combine, merge and write the server's adapters");
  table->Add(group, "list", "every adapter with its state, rank, size and checksum", "", RunList);
  AddNameCommand(group, table, "get", "one adapter in detail", RunGet);
  AddNameDirCommand(group, table, "load", "load a PEFT directory on the server as NAME",
                    "PATH is relative to the server's --adapter_root. Loading the same "
                    "files\n"
                    "under the same name again answers OK (\"already loaded\").",
                    "PATH", "a PEFT directory below the server's --adapter_root", RunLoad);
  AddNameDirCommand(group, table, "register", "register a PEFT directory on the server as NAME, weights loaded on first use",
                    "As load, but the server drops the weights after validating them; the first\n"
                    "request naming NAME loads them (for many more adapters than fit in memory).",
                    "PATH", "a PEFT directory below the server's --adapter_root", RunRegister);
  AddNameDirCommand(group, table, "upload", "send the local PEFT directory DIR and load it as NAME",
                    "Every regular file below DIR is sent in chunks with its SHA-256. A "
                    "progress\n"
                    "bar is shown on stderr when it is a terminal (or with --progress).",
                    "DIR", "local PEFT directory (adapter_config.json, adapter_model.safetensors)",
                    RunUpload);
  AddNameCommand(group, table, "delete", "unload an adapter (requests already using it finish)",
                 RunDelete);
  AddNameCommand(group, table, "merge", "merge an adapter into the base weights", RunMerge);
  AddNameCommand(group, table, "unmerge", "restore the base weights bit for bit", RunUnmerge);
  AddCombine(group, table);
  AddNameDirCommand(group, table, "save", "write an adapter as a PEFT directory into the local DIR",
                    "Writes adapter_config.json and adapter_model.safetensors (DIR is "
                    "created if\n"
                    "missing; files of the same names are replaced); SHA-256s are verified.",
                    "DIR", "local directory to write", RunSave);
  AddExport(group, table);
  table->Add(group, "unload-all", "unmerge and delete every adapter", "", RunUnloadAll);
}

}  // namespace loraserve::loractl
