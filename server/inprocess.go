package server

import (
	"context"

	"google.golang.org/grpc"

	pb "github.com/chatrelay/chatrelay/gen/chatrelay/v1"
)

// inProcess serves the gateway's unary calls by calling the services
// directly, through the same interceptor chain as gRPC (auth, limits, error
// mapping, recovery), instead of over a loopback gRPC connection: that
// extra client-and-server hop cost more than the handler itself. Streams
// still go over the connection, since the gateway's in-process streaming
// is not supported (it answers 501).
type inProcess struct {
	pb.UnimplementedChatServiceServer
	pb.UnimplementedSessionServiceServer
	chat     *chatService
	sessions *sessionService
	unary    grpc.UnaryServerInterceptor
}

// call runs one unary method through the interceptor, as grpc-go would.
func call[Req, Resp any](ic grpc.UnaryServerInterceptor, ctx context.Context, req Req, method string, h func(context.Context, Req) (Resp, error)) (Resp, error) {
	resp, err := ic(ctx, req, &grpc.UnaryServerInfo{FullMethod: method}, func(ctx context.Context, req any) (any, error) {
		return h(ctx, req.(Req))
	})
	if err != nil {
		var zero Resp
		return zero, err
	}
	return resp.(Resp), nil
}

func (p *inProcess) PostMessage(ctx context.Context, r *pb.PostMessageRequest) (*pb.PostMessageResponse, error) {
	return call(p.unary, ctx, r, pb.ChatService_PostMessage_FullMethodName, p.chat.PostMessage)
}

func (p *inProcess) SendChatbotMessage(ctx context.Context, r *pb.SendChatbotMessageRequest) (*pb.SendChatbotMessageResponse, error) {
	return call(p.unary, ctx, r, pb.ChatService_SendChatbotMessage_FullMethodName, p.chat.SendChatbotMessage)
}

func (p *inProcess) IngestMessage(ctx context.Context, r *pb.IngestMessageRequest) (*pb.IngestMessageResponse, error) {
	return call(p.unary, ctx, r, pb.ChatService_IngestMessage_FullMethodName, p.chat.IngestMessage)
}

func (p *inProcess) GetListener(ctx context.Context, r *pb.GetListenerRequest) (*pb.GetListenerResponse, error) {
	return call(p.unary, ctx, r, pb.ChatService_GetListener_FullMethodName, p.chat.GetListener)
}

func (p *inProcess) ListListeners(ctx context.Context, r *pb.ListListenersRequest) (*pb.ListListenersResponse, error) {
	return call(p.unary, ctx, r, pb.ChatService_ListListeners_FullMethodName, p.chat.ListListeners)
}

func (p *inProcess) CancelListener(ctx context.Context, r *pb.CancelListenerRequest) (*pb.CancelListenerResponse, error) {
	return call(p.unary, ctx, r, pb.ChatService_CancelListener_FullMethodName, p.chat.CancelListener)
}

func (p *inProcess) CreateSession(ctx context.Context, r *pb.CreateSessionRequest) (*pb.CreateSessionResponse, error) {
	return call(p.unary, ctx, r, pb.SessionService_CreateSession_FullMethodName, p.sessions.CreateSession)
}

func (p *inProcess) ListSessions(ctx context.Context, r *pb.ListSessionsRequest) (*pb.ListSessionsResponse, error) {
	return call(p.unary, ctx, r, pb.SessionService_ListSessions_FullMethodName, p.sessions.ListSessions)
}

func (p *inProcess) GetSession(ctx context.Context, r *pb.GetSessionRequest) (*pb.GetSessionResponse, error) {
	return call(p.unary, ctx, r, pb.SessionService_GetSession_FullMethodName, p.sessions.GetSession)
}

func (p *inProcess) UpdateSession(ctx context.Context, r *pb.UpdateSessionRequest) (*pb.UpdateSessionResponse, error) {
	return call(p.unary, ctx, r, pb.SessionService_UpdateSession_FullMethodName, p.sessions.UpdateSession)
}

func (p *inProcess) CloseSession(ctx context.Context, r *pb.CloseSessionRequest) (*pb.CloseSessionResponse, error) {
	return call(p.unary, ctx, r, pb.SessionService_CloseSession_FullMethodName, p.sessions.CloseSession)
}

func (p *inProcess) ListMessages(ctx context.Context, r *pb.ListMessagesRequest) (*pb.ListMessagesResponse, error) {
	return call(p.unary, ctx, r, pb.SessionService_ListMessages_FullMethodName, p.sessions.ListMessages)
}

func (p *inProcess) CreateWidgetToken(ctx context.Context, r *pb.CreateWidgetTokenRequest) (*pb.CreateWidgetTokenResponse, error) {
	return call(p.unary, ctx, r, pb.SessionService_CreateWidgetToken_FullMethodName, p.sessions.CreateWidgetToken)
}
