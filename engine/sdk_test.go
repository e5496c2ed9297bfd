package engine

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/fusionrag/fusionrag/internal/modeltest"
	"github.com/openai/openai-go"
	"github.com/openai/openai-go/option"
)

// TestOpenAISDK drives the engine with the official OpenAI Go SDK over the
// real stories260K model: completions, chat, streaming with usage, and
// errors surfacing as *openai.Error with the right status and fields.
func TestOpenAISDK(t *testing.T) {
	m := modeltest.Stories(t)
	_, url := startModel(t, m, Config{ModelName: "stories260K"}, nil)
	client := openai.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx := context.Background()
	direct := completion(t, url, `{"prompt":"Once upon a time","max_tokens":16,"temperature":0}`).Choices[0].Text

	c, err := client.Completions.New(ctx, openai.CompletionNewParams{
		Model:       "stories260K",
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
		MaxTokens:   openai.Int(16),
		Temperature: openai.Float(0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.Choices[0].Text != direct || c.Usage.CompletionTokens != 16 || c.Usage.PromptTokens != 5 {
		t.Errorf("completion %q usage %+v, want %q", c.Choices[0].Text, c.Usage, direct)
	}
	// Token-id prompt: the same ids give the same text.
	c2, err := client.Completions.New(ctx, openai.CompletionNewParams{
		Model:       "stories260K",
		Prompt:      openai.CompletionNewParamsPromptUnion{OfArrayOfTokens: []int64{1, 403, 407, 261, 378}},
		MaxTokens:   openai.Int(16),
		Temperature: openai.Float(0),
	})
	if err != nil {
		t.Fatal(err)
	}
	if c2.Choices[0].Text != direct {
		t.Errorf("token prompt: %q, want %q", c2.Choices[0].Text, direct)
	}

	chatParams := openai.ChatCompletionNewParams{
		Model: "stories260K",
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("Once upon a time"),
			openai.UserMessage("there was a cat."),
		},
		MaxTokens:   openai.Int(12),
		Temperature: openai.Float(0),
		Seed:        openai.Int(1),
	}
	cc, err := client.Chat.Completions.New(ctx, chatParams)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Choices[0].Message.Content == "" || cc.Choices[0].Message.Role != "assistant" || cc.Usage.TotalTokens != cc.Usage.PromptTokens+cc.Usage.CompletionTokens {
		t.Errorf("chat %+v", cc)
	}

	chatParams.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := client.Chat.Completions.NewStreaming(ctx, chatParams)
	var acc openai.ChatCompletionAccumulator
	chunks := 0
	for stream.Next() {
		acc.AddChunk(stream.Current())
		chunks++
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if got, want := acc.Choices[0].Message.Content, cc.Choices[0].Message.Content; got != want {
		t.Errorf("streamed chat %q, non-streamed %q", got, want)
	}
	if acc.Usage.CompletionTokens != cc.Usage.CompletionTokens || acc.Usage.PromptTokens != cc.Usage.PromptTokens || chunks < 3 {
		t.Errorf("streamed usage %+v over %d chunks, want %+v", acc.Usage, chunks, cc.Usage)
	}
	cs := client.Completions.NewStreaming(ctx, openai.CompletionNewParams{
		Model:       "stories260K",
		Prompt:      openai.CompletionNewParamsPromptUnion{OfString: openai.String("Once upon a time")},
		MaxTokens:   openai.Int(16),
		Temperature: openai.Float(0),
	})
	var sb strings.Builder
	for cs.Next() {
		for _, ch := range cs.Current().Choices {
			sb.WriteString(ch.Text)
		}
	}
	if err := cs.Err(); err != nil || sb.String() != direct {
		t.Errorf("streamed completion %q (err %v), want %q", sb.String(), err, direct)
	}

	// Errors.
	for _, tt := range []struct {
		name   string
		params openai.CompletionNewParams
		status int
		code   string
	}{
		{"unknown model", openai.CompletionNewParams{Model: "gpt-4o", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")}}, 404, "model_not_found"},
		{"too long", openai.CompletionNewParams{Model: "stories260K", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String(strings.Repeat("cat ", 600))}}, 400, "context_length_exceeded"},
		{"bad temperature", openai.CompletionNewParams{Model: "stories260K", Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("x")}, Temperature: openai.Float(5)}, 400, ""},
	} {
		_, err := client.Completions.New(ctx, tt.params)
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) {
			t.Errorf("%s: error %v is not an *openai.Error", tt.name, err)
			continue
		}
		if apiErr.StatusCode != tt.status || apiErr.Code != tt.code || apiErr.Message == "" || apiErr.Type != "invalid_request_error" {
			t.Errorf("%s: status %d code %q type %q message %q", tt.name, apiErr.StatusCode, apiErr.Code, apiErr.Type, apiErr.Message)
		}
	}
	models, err := client.Models.List(ctx)
	if err != nil || len(models.Data) != 1 || models.Data[0].ID != "stories260K" {
		t.Errorf("models %+v err %v", models, err)
	}
}
