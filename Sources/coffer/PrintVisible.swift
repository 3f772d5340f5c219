import CofferCrypto

/// Swift's `print` for this module: every line a command prints passes through ``VisibleText/of(_:lines:)``, line
/// breaks included (no command prints two lines at once), so that a field cannot forge a line of its own. JSON printed
/// here keeps its values (an escape reads the same inside a JSON string); ``JSONOutput`` escapes its document the same
/// way, keeping its line breaks.
func print(_ items: Any..., separator: String = " ", terminator: String = "\n") {
    Swift.print(VisibleText.of(items.map { "\($0)" }.joined(separator: separator)), terminator: terminator)
}
