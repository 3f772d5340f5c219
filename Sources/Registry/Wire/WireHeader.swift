/// Header fields of the HTTP API beyond HTTP's own.
public enum WireHeader {
    /// `PATCH /v1/uploads/{id}`: the offset the body starts at, which must be where the upload stands.
    public static let uploadOffset = "Upload-Offset"
    /// `POST /v1/sessions/{id}/predict`: the session's token (`cfs_...`), with which a server that did not open the
    /// session opens it from the session's key copy.
    public static let sessionToken = "Coffer-Session-Token"
}
