#include "cli/cli_util.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iostream>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace dsv4::cli {

namespace {

constexpr absl::string_view kCommonFlagsFile = "cli/common_flags.cc";

// Defined by one of the dsv4 programs (not by Abseil: --flagfile, --helpfull, ...).
bool IsCliFlag(const absl::CommandLineFlag& flag) {
  const std::string file = flag.Filename();  // a temporary: keep it
  return absl::StrContains(file, "/cli/") || absl::StartsWith(file, "cli/");
}

// The subcommand reads `flag`: defined in its own file, or a flag from elsewhere it named.
bool IsOwnFlag(const absl::CommandLineFlag& flag, const std::string& flag_file,
               const std::vector<std::string>& shared_flags) {
  return absl::StrContains(flag.Filename(), flag_file) ||
         std::find(shared_flags.begin(), shared_flags.end(), flag.Name()) != shared_flags.end();
}

// `text` wrapped to `width` columns, continuation lines indented by `indent`.
std::string Wrap(absl::string_view text, size_t indent, size_t width) {
  std::string out, line;
  for (absl::string_view word : absl::StrSplit(text, ' ', absl::SkipEmpty())) {
    if (!line.empty() && indent + line.size() + 1 + word.size() > width) {
      absl::StrAppend(&out, line, "\n", std::string(indent, ' '));
      line.clear();
    }
    absl::StrAppend(&line, line.empty() ? "" : " ", word);
  }
  return out + line;
}

bool IsHelpArgument(absl::string_view arg) {
  return arg == "--help" || arg == "-help" || arg == "-h" || arg == "--helpshort" ||
         arg == "-helpshort";
}

}  // namespace

std::string FlagsHelp(const std::string& usage, const std::string& flag_file,
                      const std::vector<std::string>& shared_flags) {
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (IsCliFlag(*flag) && IsOwnFlag(*flag, flag_file, shared_flags)) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  std::string out = usage + "\n\nFlags (dashes or underscores: --slo-ttft-ms = --slo_ttft_ms):\n";
  for (const absl::CommandLineFlag* flag : flags) {
    // Empty defaults (required paths, optional flags) say nothing worth a line.
    const std::string value = flag->DefaultValue();
    const std::string text =
        value.empty() ? flag->Help() : absl::StrCat(flag->Help(), " (default: ", value, ")");
    absl::StrAppend(&out, "  --", flag->Name(), "\n      ", Wrap(text, 6, 92), "\n");
  }
  return out + "  --help\n      this text; --helpfull lists every flag of the binary\n";
}

std::vector<std::string> ParseFlags(int argc, char** argv, const std::string& usage,
                                    const std::string& flag_file,
                                    const std::vector<std::string>& shared_flags) {
  absl::FlagsUsageConfig config;
  config.contains_help_flags = [flag_file](absl::string_view path) {
    return path.find(flag_file) != absl::string_view::npos ||
           path.find(kCommonFlagsFile) != absl::string_view::npos;
  };
  config.contains_helpshort_flags = config.contains_help_flags;
  config.normalize_filename = [](absl::string_view path) { return std::string(path); };
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(usage + "\n\nFlags may be spelled with dashes or underscores.");
  // Abseil spells flags with underscores; accept the dashed spelling (--shard-mb) too by
  // rewriting flag names (not values) before parsing. A non-boolean flag given without '='
  // takes the next argument as its value, which is left alone even when it starts with
  // "--" (--mpirun-args "--oversubscribe --mca ...").
  std::vector<std::string> storage(argv, argv + argc);
  std::vector<char*> args;
  bool value_next = false;
  for (size_t i = 0; i < storage.size(); ++i) {
    std::string& arg = storage[i];
    if (i > 0 && !value_next && IsHelpArgument(arg)) {
      // Abseil's own --help lists flags by file, which would show every shared flag.
      std::cout << FlagsHelp(usage, flag_file, shared_flags);
      std::exit(0);
    }
    if (i > 0 && !value_next && arg.rfind("--", 0) == 0) {
      const size_t end = std::min(arg.find('='), arg.size());
      for (size_t j = 2; j < end; ++j)
        if (arg[j] == '-') arg[j] = '_';
      std::string name = arg.substr(2, end - 2);
      const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
      if (flag == nullptr && name.rfind("no", 0) == 0) {  // --noflag for a boolean
        flag = absl::FindCommandLineFlag(name.substr(2));
      }
      if (flag != nullptr && IsCliFlag(*flag) && !IsOwnFlag(*flag, flag_file, shared_flags)) {
        std::cerr << argv[0] << ": --" << flag->Name()
                  << " is not a flag of this command (see --help)\n";
        std::exit(2);
      }
      value_next = end == arg.size() && flag != nullptr && !flag->IsOfType<bool>();
    } else {
      value_next = false;
    }
    args.push_back(arg.data());
  }
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  return std::vector<std::string>(positional.begin() + 1, positional.end());
}

int ExitCode(const absl::Status& status, const std::string& command) {
  if (status.ok()) return 0;
  std::cerr << "dsv4 " << command << ": " << status.message() << "\n";
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
      return 2;
    default:
      return 1;
  }
}

absl::StatusOr<std::vector<std::vector<int32_t>>> ParseTokenSequences(const std::string& text,
                                                                      const std::string& flag) {
  std::vector<std::vector<int32_t>> sequences;
  for (absl::string_view sequence : absl::StrSplit(text, ';', absl::SkipWhitespace())) {
    std::vector<int32_t>& tokens = sequences.emplace_back();
    for (absl::string_view part : absl::StrSplit(sequence, ',', absl::SkipWhitespace())) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(part, &id)) {
        return absl::InvalidArgumentError(absl::StrCat(flag, ": \"", part, "\" is not an integer"));
      }
      tokens.push_back(id);
    }
    if (tokens.empty()) return absl::InvalidArgumentError(absl::StrCat(flag, ": empty sequence"));
  }
  if (sequences.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " is empty: give a prompt"));
  }
  return sequences;
}

absl::StatusOr<std::string> FindProjectFile(const std::string& relative) {
  namespace fs = std::filesystem;
  std::vector<fs::path> roots = {fs::current_path()};
  if (const char* home = std::getenv("DSV4_HOME")) roots.emplace_back(home);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) roots.push_back(exe.parent_path().parent_path().parent_path());
  for (const fs::path& root : roots) {
    if (fs::exists(root / relative)) return (root / relative).string();
  }
  return absl::NotFoundError("cannot find " + relative +
                             " (looked in the current directory, $DSV4_HOME and next to the "
                             "dsv4 executable)");
}

}  // namespace dsv4::cli
