// Package chatrelay holds what belongs to the module as a whole: the OpenAPI
// document that buf generates from the contract, embedded so the server can
// serve it at /openapi.json.
package chatrelay

import _ "embed"

// OpenAPI is the REST API's OpenAPI (Swagger 2.0) document.
//
//go:embed gen/openapiv2/chatrelay.swagger.json
var OpenAPI []byte
